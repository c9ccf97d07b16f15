"""domain/adapter.py: validating PEFT LoRA folders, compatibility, digests, tags."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from loradeploy.domain.adapter import (
    AdapterInfo,
    check_compatible,
    check_digests,
    digests_from_tags,
    inspect_adapter,
    registry_tags,
)
from loradeploy.errors import IncompatibleAdapterError, InvalidAdapterError
from support.fakes import BASE_ID, BASE_ROOT
from support.synthetic import SMOLLM2, adapter_config, lora_tensors, safetensors_bytes, write_adapter

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def with_config(folder: Path, drop: tuple[str, ...] = (), **overrides: Any) -> Path:
    """A valid adapter, then its config rewritten with ``overrides`` (weights stay valid)."""
    write_adapter(folder)
    config = adapter_config(**overrides)
    for key in drop:
        config.pop(key)
    (folder / CONFIG).write_text(json.dumps(config))
    return folder


def with_weights(folder: Path, weights: bytes, rank: int = 16) -> Path:
    write_adapter(folder, rank=rank)
    (folder / WEIGHTS).write_bytes(weights)
    return folder


def raw_safetensors(header: dict[str, Any], data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def f32(shape: list[int], start: int, end: int) -> dict[str, Any]:
    return {"dtype": "F32", "shape": shape, "data_offsets": [start, end]}


def invalid(folder: Path, **kwargs: Any) -> str:
    """The message of the InvalidAdapterError ``inspect_adapter`` raises."""
    with pytest.raises(InvalidAdapterError) as caught:
        inspect_adapter(folder, **kwargs)
    return caught.value.message


# -- a valid adapter ---------------------------------------------------------------------------


def test_inspect_adapter_describes_a_valid_adapter(adapter_dir: Path) -> None:
    info = inspect_adapter(adapter_dir)

    assert info.peft_type == "LORA"
    assert info.base_model == SMOLLM2
    assert info.rank == 16
    assert info.alpha == 32.0
    assert info.target_modules == ["q_proj", "v_proj"]
    assert set(info.files) == {CONFIG, WEIGHTS}
    for name, digest in info.files.items():
        assert digest == hashlib.sha256((adapter_dir / name).read_bytes()).hexdigest()
    assert info.total_bytes == sum(p.stat().st_size for p in adapter_dir.iterdir())


def test_inspect_adapter_accepts_a_single_target_module_string(tmp_path: Path) -> None:
    info = inspect_adapter(with_config(tmp_path / "a", target_modules="q_proj"))
    assert info.target_modules == ["q_proj"]


def test_inspect_adapter_defaults_alpha_to_the_rank(tmp_path: Path) -> None:
    info = inspect_adapter(with_config(tmp_path / "a", drop=("lora_alpha",)))
    assert info.alpha == 16.0


def test_inspect_adapter_changes_nothing(adapter_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in adapter_dir.iterdir()}
    inspect_adapter(adapter_dir)
    assert {p.name: p.read_bytes() for p in adapter_dir.iterdir()} == before


# -- the folder --------------------------------------------------------------------------------


def test_a_file_is_not_a_folder(adapter_dir: Path) -> None:
    assert "not a folder" in invalid(adapter_dir / CONFIG)


def test_a_missing_folder_is_not_a_folder(tmp_path: Path) -> None:
    assert "not a folder" in invalid(tmp_path / "nothing-here")


def test_a_symlinked_folder_is_refused(adapter_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(adapter_dir, target_is_directory=True)
    assert "not a folder" in invalid(link)


def test_a_symlinked_file_is_refused(adapter_dir: Path, tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.safetensors"
    (adapter_dir / WEIGHTS).rename(real)
    (adapter_dir / WEIGHTS).symlink_to(real)
    message = invalid(adapter_dir)
    assert WEIGHTS in message
    assert "not a regular file" in message


def test_a_sub_folder_is_refused(adapter_dir: Path) -> None:
    (adapter_dir / "checkpoint-10").mkdir()
    message = invalid(adapter_dir)
    assert "checkpoint-10" in message
    assert "not a regular file" in message


def test_the_total_size_has_a_limit(adapter_dir: Path) -> None:
    size = sum(p.stat().st_size for p in adapter_dir.iterdir())
    message = invalid(adapter_dir, max_total_bytes=size - 1)
    assert "total size" in message
    assert str(size) in message
    assert inspect_adapter(adapter_dir, max_total_bytes=size).total_bytes == size


# -- adapter_config.json -----------------------------------------------------------------------


def test_a_missing_config_is_refused(adapter_dir: Path) -> None:
    (adapter_dir / CONFIG).unlink()
    assert CONFIG in invalid(adapter_dir)


@pytest.mark.parametrize("text", ["{not json", '{"peft_type": "LORA",}', "", "\udcff"])
def test_invalid_json_config_is_refused(adapter_dir: Path, text: str) -> None:
    (adapter_dir / CONFIG).write_bytes(text.encode("utf-8", "surrogateescape"))
    message = invalid(adapter_dir)
    assert CONFIG in message
    assert "not valid JSON" in message


def test_a_json_array_config_is_refused(adapter_dir: Path) -> None:
    (adapter_dir / CONFIG).write_text(json.dumps([adapter_config()]))
    message = invalid(adapter_dir)
    assert CONFIG in message
    assert "JSON object" in message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"peft_type": "IA3"}, "peft_type"),
        ({"peft_type": None}, "peft_type"),
        ({"r": "16"}, "r"),
        ({"r": 16.0}, "r"),
        ({"r": True}, "r"),
        ({"r": 0}, "r"),
        ({"r": -8}, "r"),
        ({"r": None}, "r"),
        ({"lora_alpha": "32"}, "lora_alpha"),
        ({"target_modules": []}, "target_modules"),
        ({"target_modules": None}, "target_modules"),
        ({"target_modules": ["q_proj", 3]}, "target_modules"),
        ({"use_dora": True}, "use_dora"),
        ({"bias": "all"}, "bias"),
        ({"bias": "lora_only"}, "bias"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"base_model_name_or_path": ""}, "base_model_name_or_path"),
        ({"base_model_name_or_path": "   "}, "base_model_name_or_path"),
        ({"base_model_name_or_path": None}, "base_model_name_or_path"),
    ],
)
def test_config_fields_are_checked(tmp_path: Path, overrides: dict[str, Any], field: str) -> None:
    message = invalid(with_config(tmp_path / "a", **overrides))
    assert f": {field} " in message


def test_an_empty_rank_pattern_is_accepted(tmp_path: Path) -> None:
    # PEFT writes "rank_pattern": {} into every config; only a non-empty one is refused.
    assert inspect_adapter(with_config(tmp_path / "a", rank_pattern={}, alpha_pattern={})).rank == 16


def test_a_missing_base_model_is_refused(tmp_path: Path) -> None:
    message = invalid(with_config(tmp_path / "a", drop=("base_model_name_or_path",)))
    assert "base_model_name_or_path" in message


# -- weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pickle_name", ["adapter_model.bin", "adapter_model.pt"])
def test_pickle_weights_are_refused_even_next_to_safetensors(adapter_dir: Path, pickle_name: str) -> None:
    (adapter_dir / pickle_name).write_bytes(b"\x80\x04\x95pickle")
    message = invalid(adapter_dir)
    assert pickle_name in message
    assert "pickle" in message


def test_missing_weights_are_refused(adapter_dir: Path) -> None:
    (adapter_dir / WEIGHTS).unlink()
    message = invalid(adapter_dir)
    assert WEIGHTS in message
    assert "missing" in message


@pytest.mark.parametrize("content", [b"", b"\x01\x02\x03\x04\x05\x06\x07"])
def test_safetensors_shorter_than_its_length_prefix(tmp_path: Path, content: bytes) -> None:
    message = invalid(with_weights(tmp_path / "a", content))
    assert WEIGHTS in message
    assert "shorter than a safetensors header" in message


def test_safetensors_header_length_beyond_the_file(tmp_path: Path) -> None:
    content = struct.pack("<Q", 1_000_000) + b'{"__metadata__": {}}'
    message = invalid(with_weights(tmp_path / "a", content))
    assert WEIGHTS in message
    assert "header claims 1000000 bytes" in message


def test_safetensors_header_that_is_not_json(tmp_path: Path) -> None:
    content = struct.pack("<Q", 4) + b"\xff\xfe{[" + b"\x00" * 16
    message = invalid(with_weights(tmp_path / "a", content))
    assert "header is not valid JSON" in message


def test_tensor_offsets_beyond_the_data(tmp_path: Path) -> None:
    header = {"l.lora_A.weight": f32([16, 4], 0, 256)}
    message = invalid(with_weights(tmp_path / "a", raw_safetensors(header, b"\0" * 128)))
    assert "tensor 'l.lora_A.weight' data_offsets [0, 256] lie beyond the 128 bytes" in message


def test_tensor_size_not_matching_its_shape(tmp_path: Path) -> None:
    header = {"l.lora_A.weight": f32([16, 4], 0, 128)}  # 16*4 F32 is 256 bytes
    message = invalid(with_weights(tmp_path / "a", raw_safetensors(header, b"\0" * 128)))
    assert "tensor 'l.lora_A.weight' holds 128 bytes but needs more than the 128 bytes" in message


def test_tensor_with_an_unknown_dtype(tmp_path: Path) -> None:
    header = {"l.lora_A.weight": {"dtype": "Q7", "shape": [16, 1], "data_offsets": [0, 16]}}
    message = invalid(with_weights(tmp_path / "a", raw_safetensors(header, b"\0" * 16)))
    assert "tensor 'l.lora_A.weight' dtype 'Q7' is not a safetensors dtype" in message


def test_lora_a_rank_not_matching_r(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a")  # config r=16
    (folder / WEIGHTS).write_bytes(safetensors_bytes(lora_tensors(rank=8)))
    message = invalid(folder)
    assert "lora_A.weight' has 8 on its rank axis, config r=16 (lora_A is [r, in_features])" in message


@pytest.mark.parametrize(
    ("spans", "data_len", "problem"),
    [
        ([(0, 64), (128, 192)], 192, "bytes 64..128 before tensor 'l.lora_B.weight' belong to no tensor"),
        ([(64, 128), (128, 192)], 192, "bytes 0..64 before tensor 'l.lora_A.weight' belong to no tensor"),
        ([(0, 64), (64, 128)], 192, "64 bytes after the last tensor belong to no tensor"),
    ],
)
def test_tensor_data_must_cover_the_file_exactly(
    tmp_path: Path, spans: list[tuple[int, int]], data_len: int, problem: str
) -> None:
    (a_start, a_end), (b_start, b_end) = spans
    header = {
        "l.lora_A.weight": f32([16, 1], a_start, a_end),
        "l.lora_B.weight": f32([1, 16], b_start, b_end),
    }
    message = invalid(with_weights(tmp_path / "a", raw_safetensors(header, b"\0" * data_len)))
    assert WEIGHTS in message
    assert problem in message


def test_overlapping_tensors_are_refused(tmp_path: Path) -> None:
    header = {
        "l.lora_A.weight": f32([16, 1], 0, 64),
        "l.lora_B.weight": f32([1, 16], 0, 64),
    }
    message = invalid(with_weights(tmp_path / "a", raw_safetensors(header, b"\0" * 64)))
    assert "overlaps the data of tensor 'l.lora_A.weight'" in message


def test_weights_without_lora_tensors(tmp_path: Path) -> None:
    weights = safetensors_bytes({"model.embed_tokens.weight": (4, 4)})
    message = invalid(with_weights(tmp_path / "a", weights))
    assert WEIGHTS in message
    assert "no lora_A/lora_B tensors" in message


def test_safetensors_metadata_entry_is_allowed(tmp_path: Path) -> None:
    header = {
        "__metadata__": {"format": "pt"},
        "l.lora_A.weight": f32([16, 1], 0, 64),
        "l.lora_B.weight": f32([1, 16], 64, 128),
    }
    info = inspect_adapter(with_weights(tmp_path / "a", raw_safetensors(header, b"\0" * 128)))
    assert info.rank == 16


def test_a_peft_shaped_adapter_passes(tmp_path: Path) -> None:
    # As PEFT 0.21 saves it (checked on a real save_pretrained): lora_A is [r, in_features],
    # lora_B is [out_features, r], and out_features differs between modules (grouped
    # query attention makes v_proj narrower than q_proj).
    prefix = "base_model.model.model.layers.0.self_attn"
    tensors = {
        f"{prefix}.q_proj.lora_A.weight": (16, 576),
        f"{prefix}.q_proj.lora_B.weight": (576, 16),
        f"{prefix}.v_proj.lora_A.weight": (16, 576),
        f"{prefix}.v_proj.lora_B.weight": (192, 16),
    }
    assert inspect_adapter(with_weights(tmp_path / "a", safetensors_bytes(tensors))).rank == 16


def test_a_header_error_is_one_line_naming_the_file_and_the_tensor(tmp_path: Path) -> None:
    name = "l.lora_B.weight\n" + "x" * 10_000  # a hostile name: a newline and 10 kB
    header = {"l.lora_A.weight": f32([16, 1], 0, 64), name: f32([-1, -16], 64, 128)}
    message = invalid(with_weights(tmp_path / "a", raw_safetensors(header, b"\0" * 128)))
    assert message.startswith(f"adapter {tmp_path / 'a'}: {WEIGHTS} tensor 'l.lora_B.weight\\n")
    assert "has a negative dimension" in message
    assert "\n" not in message
    assert len(message) < 500


def test_a_dimension_of_4000_digits_is_cut_in_the_message(tmp_path: Path) -> None:
    header = {"l.lora_A.weight": f32([16, 1], 0, 64), "l.lora_B.weight": f32([-(10**4000), 16], 64, 128)}
    message = invalid(with_weights(tmp_path / "a", raw_safetensors(header, b"\0" * 128)))
    assert "has a negative dimension (-1000" in message
    assert len(message) < 500


def test_a_shape_of_many_dimensions_is_not_multiplied_out(tmp_path: Path) -> None:
    # 2**100000 has 30103 digits: printing it would raise ValueError (over 4300 digits).
    header = {
        "l.lora_A.weight": f32([16, 1], 0, 64),
        "l.lora_B.weight": f32([1, 16], 64, 128),
        "l.extra": f32([2] * 100_000, 128, 128),
    }
    message = invalid(with_weights(tmp_path / "a", raw_safetensors(header, b"\0" * 128)))
    assert "tensor 'l.extra' holds 0 bytes but needs more than the 128 bytes of tensor data" in message


# -- compatibility with the served base -------------------------------------------------------


def info_for(base: str = BASE_ID, rank: int = 16) -> AdapterInfo:
    return AdapterInfo(
        peft_type="LORA",
        base_model=base,
        rank=rank,
        alpha=32.0,
        target_modules=["q_proj", "v_proj"],
        files={CONFIG: "0" * 64},
        total_bytes=100,
    )


SERVED = (BASE_ID, BASE_ROOT)


def compatible(info: AdapterInfo, aliases: dict[str, str] | None = None, max_rank: int = 16) -> None:
    check_compatible(
        info, served_names=SERVED, base_aliases=aliases or {}, max_lora_rank=max_rank, label="model 'm' v1"
    )


@pytest.mark.parametrize("base", [BASE_ID, BASE_ROOT])
def test_base_matches_by_served_id_or_served_root(base: str) -> None:
    compatible(info_for(base=base))


def test_base_matches_through_a_base_alias() -> None:
    adapter_base = "mistralai/Mistral-7B-v0.1"
    compatible(info_for(base=adapter_base), aliases={adapter_base: BASE_ID})


def test_an_alias_for_another_base_does_not_help() -> None:
    with pytest.raises(IncompatibleAdapterError):
        compatible(info_for(base="meta-llama/Llama-3-8B"), aliases={"mistralai/Mistral-7B-v0.1": BASE_ID})


def test_another_base_is_incompatible() -> None:
    with pytest.raises(IncompatibleAdapterError) as caught:
        compatible(info_for(base="meta-llama/Llama-3-8B"))
    message = caught.value.message
    assert "model 'm' v1" in message
    assert "base_model_name_or_path" in message
    assert "'meta-llama/Llama-3-8B'" in message
    assert any(repr(name) in message for name in SERVED)
    assert "--base-model-alias" in caught.value.hint


def test_rank_above_the_server_limit_is_incompatible() -> None:
    with pytest.raises(IncompatibleAdapterError) as caught:
        compatible(info_for(rank=32), max_rank=16)
    assert "r is 32" in caught.value.message
    assert "16" in caught.value.message


def test_rank_equal_to_the_server_limit_is_compatible() -> None:
    compatible(info_for(rank=64), max_rank=64)


# -- digests and tags -------------------------------------------------------------------------


def test_check_digests_passes_on_the_registered_files(adapter_dir: Path) -> None:
    check_digests(adapter_dir, inspect_adapter(adapter_dir).files, "model 'm' v1")


def test_check_digests_fails_on_a_changed_byte(adapter_dir: Path) -> None:
    digests = inspect_adapter(adapter_dir).files
    data = bytearray((adapter_dir / WEIGHTS).read_bytes())
    data[-1] ^= 0x01
    (adapter_dir / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(InvalidAdapterError) as caught:
        check_digests(adapter_dir, digests, "model 'm' v1")
    assert f"sha256 of {WEIGHTS}" in caught.value.message
    assert "model 'm' v1" in caught.value.message


def test_check_digests_fails_on_a_missing_file(adapter_dir: Path) -> None:
    digests = inspect_adapter(adapter_dir).files
    (adapter_dir / CONFIG).unlink()
    with pytest.raises(InvalidAdapterError) as caught:
        check_digests(adapter_dir, digests, "model 'm' v1")
    assert f"missing ['{CONFIG}']" in caught.value.message


def test_check_digests_fails_on_an_extra_file(adapter_dir: Path) -> None:
    digests = inspect_adapter(adapter_dir).files
    (adapter_dir / "README.md").write_text("extra")
    with pytest.raises(InvalidAdapterError) as caught:
        check_digests(adapter_dir, digests, "model 'm' v1")
    assert "extra ['README.md']" in caught.value.message


def test_registry_tags_round_trip_to_digests(adapter_dir: Path) -> None:
    info = inspect_adapter(adapter_dir)
    tags = registry_tags(info)

    assert digests_from_tags(tags) == info.files
    assert tags["loradeploy.base_model"] == SMOLLM2
    assert tags["loradeploy.rank"] == "16"
    assert tags["loradeploy.target_modules"] == "q_proj,v_proj"
    assert tags["loradeploy.bytes"] == str(info.total_bytes)


def test_digests_from_tags_ignores_other_tags() -> None:
    tags = {"loradeploy.sha256.a.json": "ab", "loradeploy.rank": "8", "owner": "x", "sha256.b": "cd"}
    assert digests_from_tags(tags) == {"a.json": "ab"}


def test_digests_inspect_took_are_compared_with_the_tags_without_reading_the_files_again(
    tmp_path: Path,
) -> None:
    folder = write_adapter(tmp_path / "a")
    real = inspect_adapter(folder).files
    claimed = {**real, "adapter_model.safetensors": "0" * 64}
    with pytest.raises(InvalidAdapterError, match=r"sha256 of adapter_model\.safetensors"):
        check_digests(folder, real, "downloaded", computed=claimed)  # the given digest is the one compared
    check_digests(folder, real, "downloaded", computed=real)
    check_digests(folder, real, "downloaded")  # the files themselves are fine


def test_digests_given_for_some_files_leave_the_others_hashed(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a")
    real = inspect_adapter(folder).files
    (folder / "adapter_model.safetensors").write_bytes(b"changed")
    with pytest.raises(InvalidAdapterError, match=r"sha256 of adapter_model\.safetensors"):
        check_digests(
            folder, real, "downloaded", computed={"adapter_config.json": real["adapter_config.json"]}
        )
