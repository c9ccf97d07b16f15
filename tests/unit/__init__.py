"""Unit tests: pure logic and clients against in-process fakes."""
