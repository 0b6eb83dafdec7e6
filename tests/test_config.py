"""Typed configs from YAML (core/config.py): defaults, round trip, misspelt keys, types, overrides, validation."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from edgeqat.config import (
    CheckConfig,
    QuantConfig,
    RunConfig,
    Thresholds,
    from_dict,
    group_size_of,
    load_config,
    to_dict,
    validate,
)
from edgeqat.errors import EdgeqatError


def write(tmp_path, text: str, name: str = "config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_load():
    config = load_config()
    assert config == RunConfig()
    assert config.quant.scheme == "8da4w"
    assert config.quant.group_size is None
    assert config.train.mode == "qat"
    assert config.train.max_steps == 120
    assert config.check.thresholds.min_logits_cosine == 0.99
    assert group_size_of(config.quant) == 32


def test_empty_file_is_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == RunConfig()


def test_yaml_round_trip(tmp_path):
    config = load_config()
    config.output_dir = str(tmp_path / "out")
    config.quant.scheme = "8da8w"
    config.quant.group_size = 0
    config.quant.embedding_bits = 8
    config.quant.skip_indivisible = True
    config.train.mode = "ptq"
    config.train.max_steps = 7
    config.train.learning_rate = 0.001
    config.export.golden_prompts = ["one", "two words"]
    config.check.thresholds.min_top1_agreement = 0.5
    path = write(tmp_path, yaml.safe_dump(to_dict(config)))
    loaded = load_config(path)
    assert loaded == config
    assert to_dict(loaded) == to_dict(config)


def test_from_dict_round_trip():
    config = RunConfig()
    assert from_dict(RunConfig, to_dict(config)) == config
    assert from_dict(QuantConfig, {"scheme": "4w"}) == QuantConfig(scheme="4w")


def test_partial_file_keeps_other_defaults(tmp_path):
    config = load_config(write(tmp_path, "train:\n  max_steps: 5\nquant:\n  scheme: 4w\n"))
    assert config.train.max_steps == 5
    assert config.quant.scheme == "4w"
    assert config.train.batch_size == RunConfig().train.batch_size
    assert config.export == RunConfig().export


def test_misspelt_key_suggests_the_right_one(tmp_path):
    with pytest.raises(EdgeqatError) as e:
        load_config(write(tmp_path, "train:\n  max_step: 5\n"))
    assert "did you mean 'max_steps'" in str(e.value)
    assert "train.max_step" in str(e.value)


def test_unknown_key_without_a_close_match_lists_the_keys(tmp_path):
    with pytest.raises(EdgeqatError) as e:
        load_config(write(tmp_path, "quant:\n  zzzzzz: 1\n"))
    message = str(e.value)
    assert "quant.zzzzzz" in message
    for f in dataclasses.fields(QuantConfig):
        assert f.name in message


def test_unknown_key_in_a_nested_section(tmp_path):
    with pytest.raises(EdgeqatError) as e:
        load_config(write(tmp_path, "check:\n  thresholds:\n    min_cosine: 0.9\n"))
    message = str(e.value)
    assert "check.thresholds.min_cosine" in message
    assert "did you mean 'min_logits_cosine'" in message


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(EdgeqatError, match="did you mean 'train'"):
        load_config(write(tmp_path, "trian:\n  max_steps: 5\n"))


def test_wrong_type_string_for_int(tmp_path):
    with pytest.raises(EdgeqatError) as e:
        load_config(write(tmp_path, "train:\n  max_steps: ten\n"))
    message = str(e.value)
    assert "train.max_steps" in message
    assert "int" in message
    assert "'ten'" in message


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(EdgeqatError, match="train.batch_size"):
        load_config(write(tmp_path, "train:\n  batch_size: true\n"))


def test_int_is_accepted_for_a_float(tmp_path):
    config = load_config(write(tmp_path, "train:\n  learning_rate: 1\n"))
    assert config.train.learning_rate == 1.0
    assert type(config.train.learning_rate) is float


def test_section_that_is_not_a_mapping(tmp_path):
    with pytest.raises(EdgeqatError, match="train: expected a mapping"):
        load_config(write(tmp_path, "train: 5\n"))


def test_top_level_that_is_not_a_mapping(tmp_path):
    with pytest.raises(EdgeqatError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_list_key_checks_its_items(tmp_path):
    config = load_config(write(tmp_path, "export:\n  golden_prompts: [hello, world]\n"))
    assert config.export.golden_prompts == ["hello", "world"]
    with pytest.raises(EdgeqatError, match="export.golden_prompts"):
        load_config(write(tmp_path, "export:\n  golden_prompts: hello\n"))
    with pytest.raises(EdgeqatError, match="export.golden_prompts"):
        load_config(write(tmp_path, "export:\n  golden_prompts: [hello, 3]\n"))


def test_bad_yaml_mentions_the_line(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 5\n  mode: [qat\n")
    with pytest.raises(EdgeqatError) as e:
        load_config(path)
    message = str(e.value)
    assert "not valid YAML" in message
    assert str(path) in message
    assert "line 4" in message  # the unclosed bracket runs into the end of the file


def test_bad_yaml_indentation_mentions_its_line(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 5\n    batch_size: 2\n")
    with pytest.raises(EdgeqatError) as e:
        load_config(path)
    assert "line 3" in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(EdgeqatError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_dotted_overrides_apply():
    config = load_config(
        None,
        {
            "train.max_steps": 3,
            "quant.scheme": "8da8w",
            "check.thresholds.min_top1_agreement": 0.5,
            "output_dir": "elsewhere",
            "train.batch_size": None,  # an option not given on the command line
        },
    )
    assert config.train.max_steps == 3
    assert config.quant.scheme == "8da8w"
    assert config.check.thresholds.min_top1_agreement == 0.5
    assert config.output_dir == "elsewhere"
    assert config.train.batch_size == RunConfig().train.batch_size


def test_overrides_win_over_the_file(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 5\n  batch_size: 2\n")
    config = load_config(path, {"train.max_steps": 9})
    assert config.train.max_steps == 9
    assert config.train.batch_size == 2


def test_misspelt_override_is_caught():
    with pytest.raises(EdgeqatError, match="did you mean 'max_steps'"):
        load_config(None, {"train.max_step": 3})


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        ({"train.mode": "int4"}, "unknown train.mode 'int4'; choose one of: qat, bf16, ptq"),
        ({"quant.scheme": "9bit"}, "unknown scheme '9bit'"),
        ({"train.device": "tpu"}, "unknown train.device 'tpu'; choose one of: auto, cpu, cuda"),
        ({"quant.group_size": -32}, "quant.group_size must be at least 0, got -32"),
        ({"quant.embedding_bits": 3}, "unknown quant.embedding_bits 3; choose one of: 0, 4, 8"),
        ({"train.max_steps": 0}, "train.max_steps must be at least 1"),
        ({"export.max_seq_len": 1}, "export.max_seq_len must be at least 2"),
    ],
)
def test_load_config_validates(overrides, fragment):
    with pytest.raises(EdgeqatError) as e:
        load_config(None, overrides)
    assert fragment in str(e.value)


def test_validate_rejects_a_config_built_in_code():
    config = RunConfig()
    validate(config)
    config.train.mode = "fp8"
    with pytest.raises(EdgeqatError, match="unknown train.mode"):
        validate(config)
    config = RunConfig(quant=QuantConfig(scheme="nope"))
    with pytest.raises(EdgeqatError, match="unknown scheme"):
        validate(config)
    config = RunConfig(quant=QuantConfig(group_size=-1))
    with pytest.raises(EdgeqatError, match="quant.group_size"):
        validate(config)
    config = RunConfig()
    config.train.device = "gpu"
    with pytest.raises(EdgeqatError, match="device"):
        validate(config)


def test_group_size_of():
    assert group_size_of(QuantConfig(scheme="8da8w")) == 0
    assert group_size_of(QuantConfig(scheme="8da4w", group_size=128)) == 128
    assert group_size_of(QuantConfig(scheme="8da4w", group_size=0)) == 0


def test_nested_dataclass_defaults_are_independent():
    a, b = CheckConfig(), CheckConfig()
    a.thresholds.min_logits_cosine = 0.1
    assert b.thresholds == Thresholds()


def test_range_learning_is_on_by_default_for_lora_qat_only_with_its_measured_rates():
    from edgeqat.config import FULL_RANGE_LEARNING_RATE, LORA_RANGE_LEARNING_RATE, with_auto_settings

    def resolved(**overrides):
        config = with_auto_settings(load_config(None, overrides))
        return config.quant.range_learning, config.train.range_learning_rate

    assert resolved() == (False, FULL_RANGE_LEARNING_RATE)
    assert resolved(**{"train.lora_rank": 16}) == (True, LORA_RANGE_LEARNING_RATE) == (True, 1e-4)
    assert resolved(**{"train.lora_rank": 16, "train.mode": "bf16"}) == (False, 1e-4)  # nothing to learn scales for
    assert resolved(**{"train.lora_rank": 16, "quant.range_learning": False}) == (False, 1e-4)
    assert resolved(**{"quant.range_learning": True, "train.range_learning_rate": 3e-5}) == (True, 3e-5)
    assert load_config(None, {}).quant.range_learning is None  # auto until training resolves it


def test_no_range_learning_turns_lora_qat_back_to_absmax_scales():
    from edgeqat.cli import build_parser

    args = build_parser().parse_args(["train", "--output", "x", "--lora-rank", "16", "--no-range-learning"])
    assert getattr(args, "quant.range_learning") is False
