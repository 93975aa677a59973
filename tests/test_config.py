"""The typed pipeline config: paper defaults, YAML + --set, errors that name the key, and
the resume fingerprint (which changes block a resume and which do not)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from selfinstruct.config import (
    BLOCKLIST,
    ConfigError,
    PipelineConfig,
    apply_overrides,
    config_hash,
    describe,
    diff_fingerprints,
    fingerprint,
    from_dict,
    load_config,
    to_dict,
)

REPO = Path(__file__).resolve().parents[1]


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_defaults_are_the_papers_numbers() -> None:
    cfg = PipelineConfig()
    g, s, f = cfg.generation, cfg.sampling, cfg.filters
    assert (g.num_prompt_tasks, g.num_machine_tasks, g.instances_per_task) == (8, 2, 5)
    assert (s.temperature, s.top_p, s.max_new_tokens) == (0.7, 0.5, 1024)
    assert (f.min_words, f.max_words, f.rouge_threshold, f.similar_top_k) == (4, 150, 0.7, 10)
    assert f.blocklist == ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map",
                           "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"]
    assert f.blocked_prefixes == ["write a program"]
    # Each config gets its own list: editing one must not edit the module default.
    f.blocklist.append("chart")
    assert "chart" not in BLOCKLIST and "chart" not in PipelineConfig().filters.blocklist


def test_default_pipeline_file_loads() -> None:
    cfg = load_config(REPO / "pipelines" / "default.yaml")
    assert cfg.name == "default" and cfg.run_dir == Path("outputs/default")
    assert cfg.backend.kind == "transformers" and cfg.backend.model == "smollm2"
    assert cfg.generation.prompt_style == "plain"
    assert all((REPO / p).exists() for p in cfg.seed_tasks)


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    assert load_config(write_yaml(tmp_path / "tiny.yaml", {"generation": {"target": 3}})).name == "tiny"
    assert load_config(write_yaml(tmp_path / "x.yaml", {"name": "mine"})).name == "mine"
    assert load_config(None).name == "default"


# --------------------------------------------------------------------------- unknown keys and types

def test_unknown_top_level_key_is_named_with_the_valid_ones(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "p.yaml", {"genration": {"target": 3}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith("unknown key genration; valid keys: ")
    assert "generation" in msg and "sampling" in msg and "backend" in msg


def test_unknown_nested_key_is_named_with_its_section(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "p.yaml", {"generation": {"targte": 3, "sed": 1}})
    with pytest.raises(ConfigError, match=r"^unknown keys generation\.sed, generation\.targte; "
                                          r"valid keys under generation: .*\btarget\b"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key backend\.openai\.base_url;"):
        load_config(None, ["backend.openai.base_url=http://x"])


@pytest.mark.parametrize("override, message", [
    ("generation.target=many", "generation.target: expected an integer, got 'many'"),
    ("generation.target=true", "generation.target: expected an integer, got True"),
    ("generation.target=2.5", "generation.target: expected an integer, got 2.5"),
    ("generation.method=magic", "generation.method: 'magic' is not one of 'alpaca', 'self_instruct'"),
    ("sampling.temperature=hot", "sampling.temperature: expected a number, got 'hot'"),
    ("backend.openai.require_key=1", "backend.openai.require_key: expected true or false, got 1"),
    ("generation=5", "generation: expected a mapping of GenerationConfig fields, got 5"),
    ("sampling.stop={a: 1}", "sampling.stop: expected a list, got {'a': 1}"),
    ("export=[1]", "export: expected a mapping, got [1]"),
])
def test_wrong_types_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == message


def test_values_are_converted_where_unambiguous() -> None:
    cfg = load_config(None, ["sampling.temperature=1", "seed_tasks=one.jsonl", "name=123",
                             "filters.blocklist=[image, 'go to']", "finetune=null"])
    assert cfg.sampling.temperature == 1.0 and isinstance(cfg.sampling.temperature, float)
    assert cfg.seed_tasks == ["one.jsonl"]
    assert cfg.name == "123"
    assert cfg.filters.blocklist == ["image", "go to"]
    assert cfg.finetune is None


# --------------------------------------------------------------------------- overrides

def test_overrides_apply_after_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "p.yaml", {"generation": {"target": 3, "seed": 7}})
    cfg = load_config(path, ["generation.target=50", "backend.openai.max_concurrency=4", "sampling.stop=[END]"])
    assert cfg.generation.target == 50 and cfg.generation.seed == 7
    assert cfg.backend.openai.max_concurrency == 4
    assert cfg.sampling.stop == ["END"]


def test_override_syntax_errors() -> None:
    with pytest.raises(ConfigError, match=r"--set 'generation.target': expected key=value"):
        apply_overrides({}, ["generation.target"])
    with pytest.raises(ConfigError, match=r"--set generation.target.x: 'target' is not a section"):
        apply_overrides({"generation": {"target": 3}}, ["generation.target.x=1"])
    with pytest.raises(ConfigError, match=r"--set sampling.stop: cannot parse value"):
        apply_overrides({}, ["sampling.stop=[unclosed"])
    assert apply_overrides({}, ["a.b.c=1", "a.b.d=", "e=x=y"]) == {"a": {"b": {"c": 1, "d": ""}}, "e": "x=y"}


def test_bad_pipeline_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pipeline file not found: .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(not_mapping)
    invalid = tmp_path / "bad.yaml"
    invalid.write_text("generation: {target: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML"):
        load_config(invalid)


@pytest.mark.parametrize("override, message", [
    ("generation.target=0", "generation.target must be at least 1"),
    ("generation.num_machine_tasks=9", "generation.num_machine_tasks must be between 0"),
    ("generation.requests_per_round=0", "requests_per_round must be >= 1"),
    ("filters.rouge_threshold=0", r"filters.rouge_threshold must be in \(0, 1\]"),
    ("filters.rouge_threshold=1.5", r"filters.rouge_threshold must be in \(0, 1\]"),
    ("filters.min_words=200", "filters.min_words must not exceed filters.max_words"),
    ("backend.kind=scripted", "backend.kind=scripted needs backend.replies"),
    ("sampling.max_new_tokens=0", "sampling.max_new_tokens must be >= 1"),
])
def test_invalid_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


# --------------------------------------------------------------------------- resume fingerprint

def test_resume_safe_fields_stay_out_of_the_fingerprint() -> None:
    fp = fingerprint(PipelineConfig())
    for safe in ["name", "output_dir", "export", "finetune", "generation.target", "generation.requests_per_round",
                 "generation.max_requests", "backend.batch_size", "backend.threads", "backend.device",
                 "backend.delay_s", "backend.openai.base_urls", "backend.openai.max_concurrency"]:
        assert safe not in fp, safe
    for decisive in ["seed_tasks", "generation.seed", "generation.num_prompt_tasks", "generation.method",
                     "sampling.temperature", "sampling.top_p", "filters.rouge_threshold", "filters.blocklist",
                     "backend.kind", "backend.model", "backend.dtype", "backend.openai.endpoint"]:
        assert decisive in fp, decisive


def test_config_hash_follows_only_decisive_changes() -> None:
    base = load_config(None)
    assert config_hash(base) == config_hash(load_config(None))
    grown = load_config(None, ["generation.target=500", "backend.batch_size=2", "name=other"])
    assert config_hash(grown) == config_hash(base)
    changed = load_config(None, ["sampling.temperature=1.0"])
    assert config_hash(changed) != config_hash(base)
    assert diff_fingerprints(fingerprint(base), fingerprint(changed)) == ["sampling.temperature: 0.7 -> 1.0"]


def test_to_dict_round_trips() -> None:
    cfg = load_config(None, ["generation.target=9", "backend.openai.base_urls=[http://a, http://b]"])
    again = from_dict(PipelineConfig, to_dict(cfg))
    assert again == cfg


def test_describe_lists_every_field_with_help() -> None:
    rows = describe()
    keys = [k for k, _, _ in rows]
    assert len(keys) == len(set(keys))
    assert {"generation.target", "filters.rouge_threshold", "backend.openai.api_key_env", "backend.delay_s"} <= set(keys)
    assert all(help_text for _, _, help_text in rows)
    assert dict((k, d) for k, d, _ in rows)["generation.target"] == "100"


def test_fields_added_by_an_upgrade_do_not_block_a_resume() -> None:
    cfg = load_config(None, [])
    new = fingerprint(cfg)
    old = {k: v for k, v in new.items() if k != "filters.tokenizer"}  # a run started before that field existed
    assert diff_fingerprints(old, new) == []
    changed = fingerprint(load_config(None, ["filters.tokenizer=unicode"]))
    assert diff_fingerprints(old, changed) == ["filters.tokenizer: 'rouge' -> 'unicode'"]
