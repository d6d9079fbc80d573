"""Adapters from elsewhere and team-wide adapter operations.

`collm-serve import-adapter` turns a plain peft folder (saved from the tiny model, no manifest)
into a version a live agent serves; `activate`, and `swap` / `activate` / `rollback --team` move
every agent of a team or none. Agents: transformers engine, tiny model (tests/conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from collm_serve.adapters import team_ops
from collm_serve.adapters.manifest import MANIFEST_FILE, WEIGHTS_FILE, sha256_file
from collm_serve.cli import main
from collm_serve.client import AgentClient
from collm_serve.models import TINY_MODEL, tiny_model_dir
from tests.conftest import start_agent

PROMPT = [{"role": "user", "content": "Say it."}]
AGENTS = ("helper", "main")


def save_peft(out: Path, *, seed: int, r: int = 4, modules=("q_proj", "v_proj"), base: str | None = None) -> Path:
    """A peft LoRA folder as peft/TRL users have it: `save_pretrained` of the tiny model, no
    manifest. Random A and B (init_lora_weights=False): greedy output visibly changes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(modules),
                                             lora_dropout=0.0, init_lora_weights=False))
    model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir())  # peft records the folder it loaded
    if base is not None:
        config["base_model_name_or_path"] = base
        (out / "adapter_config.json").write_text(json.dumps(config))
    (out / "tokenizer_config.json").write_text("{}")  # TRL saves tokenizer files beside the adapter
    return out


@pytest.fixture(scope="module")
def peft_dirs(tmp_path_factory) -> dict[int, Path]:
    where = tmp_path_factory.mktemp("peft")
    return {seed: save_peft(where / f"lora{seed}", seed=seed) for seed in (1, 2, 3)}


def cli(*args) -> tuple[int, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r.exit_code, r.output


def import_(src, agent, root, *more) -> tuple[int, str]:
    return cli("import-adapter", src, "--agent", agent, "--model", TINY_MODEL, "--adapter-root", root, *more)


# -- import-adapter, offline ------------------------------------------------------------------


def test_import_writes_next_version_with_manifest(tmp_path, peft_dirs):
    root = tmp_path / "adapters"
    code, out = import_(peft_dirs[1], "helper", root)
    assert code == 0, out
    v1 = root / "helper" / "v1"
    manifest = json.loads((v1 / MANIFEST_FILE).read_text())
    assert manifest["sha256"] == sha256_file(v1 / WEIGHTS_FILE) == sha256_file(peft_dirs[1] / WEIGHTS_FILE)
    assert (manifest["name"], manifest["version"], manifest["base_model"]) == ("helper", 1, "tiny-llama-s0")
    assert manifest["algorithm"] == "imported" and manifest["source"] == str(peft_dirs[1].resolve())
    assert sorted(p.name for p in v1.iterdir()) == ["adapter_config.json", WEIGHTS_FILE, MANIFEST_FILE]
    assert f"helper v1 sha256={manifest['sha256']}" in out
    code, out = import_(peft_dirs[2], "helper", root, "--json")
    assert code == 0, out
    assert json.loads(out)["manifest"]["version"] == 2 and json.loads(out)["rank"] == 4
    assert sorted(p.name for p in (root / "helper").iterdir()) == ["v1", "v2"]  # no staging left


def test_import_refuses_what_the_agent_could_not_serve(tmp_path, peft_dirs):
    root = tmp_path / "adapters"
    other = save_peft(tmp_path / "smol", seed=4, base="HuggingFaceTB/SmolLM2-135M-Instruct")
    code, out = import_(other, "helper", root)
    assert code == 1 and "trained on 'HuggingFaceTB/SmolLM2-135M-Instruct'" in out and "--base-model" in out
    assert out.count("\n") == 1 and "Traceback" not in out
    assert not (root / "helper").exists() or not any((root / "helper").iterdir())
    # the user states the weights are the same model under another name: shapes still checked
    code, out = import_(other, "helper", root, "--base-model", "tiny-llama-s0")
    assert code == 0, out
    code, out = import_(other, "helper", root, "--base-model", "SmolLM2-135M-Instruct")
    assert code == 1 and "is not agent 'helper'" in out

    wide = save_peft(tmp_path / "wide", seed=5, r=32)
    code, out = import_(wide, "helper", root)
    assert code == 1 and "rank 32 exceeds" in out and "max_lora_rank 16" in out
    assert sorted(p.name for p in (root / "helper").iterdir()) == ["v1"]  # staging removed

    code, out = import_(peft_dirs[1], "helper", root, "--version", "1")
    assert code == 1 and "exists; versions are immutable" in out and "next free: 2" in out

    nested = tmp_path / "trl-out"
    (nested / "policy").mkdir(parents=True)
    (nested / "policy" / "adapter_config.json").write_text("{}")
    code, out = import_(nested, "helper", root)
    assert code == 1 and f"try {nested / 'policy'}" in out

    code, out = import_(tmp_path / "missing", "helper", root)
    assert code == 1 and "is not a folder" in out
    code, out = import_(peft_dirs[1], "nobody", root)
    assert code == 1 and "agents.nobody: no such agent" in out


# -- live agents --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def team(tmp_path_factory, peft_dirs):
    """Agents helper and main (tiny model), each with imported v1 and v2, and their team file."""
    tmp = tmp_path_factory.mktemp("team")
    root = tmp / "adapters"
    for v in (1, 2):
        for i, agent in enumerate(AGENTS):
            code, out = import_(peft_dirs[v if i == 0 else 3 - v], agent, root, "--version", v)
            assert code == 0, out
    agents = {a: start_agent(tmp, a, adapter_root=str(root)) for a in AGENTS}
    team_file = tmp / "team.yaml"
    team_file.write_text(yaml.safe_dump({"task": "toy", "agents": {a: {"address": p.address} for a, p in agents.items()}}))
    yield agents, team_file, root
    for p in agents.values():
        p.stop()


def active(agents) -> dict[str, tuple[int, str]]:
    out = {}
    for a, p in agents.items():
        with AgentClient(p.address) as c:
            ref = c.info().active_adapter
            out[a] = (ref.version, ref.sha256)
    return out


def greedy(address: str):
    with AgentClient(address) as c:
        return c.generate(messages=PROMPT, max_tokens=8, temperature=0)


def test_imported_adapter_is_served(team):
    agents, _, root = team
    helper = agents["helper"]
    base = greedy(helper.address)
    code, out = cli("swap", "--address", helper.address, "--adapter", root / "helper" / "v1")
    assert code == 0, out
    served = greedy(helper.address)
    manifest = json.loads((root / "helper" / "v1" / MANIFEST_FILE).read_text())
    assert (served.adapter.version, served.adapter.sha256) == (1, manifest["sha256"])
    assert served.token_ids != base.token_ids
    code, out = cli("activate", "--address", helper.address, "--base")
    assert code == 0 and "active: base model (was helper v1" in out
    assert greedy(helper.address).token_ids == base.token_ids
    code, out = cli("adapters", "--address", helper.address, "--json")
    listing = json.loads(out)
    assert code == 0 and listing["active"]["version"] == "0" and [a["version"] for a in listing["adapters"]] == ["1"]
    code, out = cli("activate", "--address", helper.address, "--version", "1", "--base")
    assert code == 1 and "--version N (a loaded version) or --base, not both" in out


def test_team_swap_rollback_activate(team):
    agents, team_file, root = team
    want = {v: {a: json.loads((root / a / f"v{v}" / MANIFEST_FILE).read_text())["sha256"] for a in AGENTS}
            for v in (1, 2)}
    for v, folder in ((1, ["--adapter", root]), (2, [])):  # given folder, then each agent's own root
        code, out = cli("swap", "--team", team_file, "--version", v, *folder)
        assert code == 0, out
        assert active(agents) == {a: (v, want[v][a]) for a in AGENTS}
        assert out.count(" changed") == 2
    code, out = cli("rollback", "--team", team_file, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["ok"] and [(r["agent"], r["before"]["version"], r["after"]["version"], r["status"])
                             for r in report["agents"]] == [("helper", 2, 1, "changed"), ("main", 2, 1, "changed")]
    assert active(agents) == {a: (1, want[1][a]) for a in AGENTS}
    code, out = cli("activate", "--team", team_file, "--version", 2)
    assert code == 0, out
    assert active(agents) == {a: (2, want[2][a]) for a in AGENTS}
    code, out = cli("swap", "--team", team_file)
    assert code == 1 and "--team needs --version N" in out
    code, out = cli("rollback", "--team", team_file, "--address", agents["main"].address)
    assert code == 1 and "not both" in out


def assert_all_or_none(before: dict, agents) -> None:
    """The team is exactly where it was: no agent kept a new active version."""
    assert active(agents) == before


def fail_half_way(agents, team_file, root) -> tuple[dict, int, str]:
    """Load v3 on helper only, then ask the team to activate v3: helper switches, main cannot."""
    before = active(agents)
    if not (root / "helper" / "v3").exists():
        assert import_(root / "helper" / "v1", "helper", root, "--version", 3)[0] == 0
    code, out = cli("swap", "--address", agents["helper"].address, "--adapter", root / "helper" / "v3", "--no-activate")
    assert code == 0, out
    code, out = cli("activate", "--team", team_file, "--version", 3)
    return before, code, out


def test_team_activate_is_all_or_none(team):
    agents, team_file, root = team
    before, code, out = fail_half_way(agents, team_file, root)
    assert code == 1, out
    assert "helper (" in out and "put back" in out and "main (" in out and "NOT_FOUND" in out
    assert "team activate failed (all or none)" in out
    assert_all_or_none(before, agents)
    # a version missing on one agent stops a team swap before anything is activated
    code, out = cli("swap", "--team", team_file, "--version", 3)
    assert code == 1 and "main refused" in out and "no active version changed" in out
    assert_all_or_none(before, agents)
    code, out = cli("activate", "--team", team_file, "--base")
    assert code == 0, out


def test_all_or_none_check_fails_without_put_back(team, monkeypatch):
    """The all-or-none test can fail: with the put-back step removed, helper stays on v3."""
    agents, team_file, root = team
    cli("activate", "--team", team_file, "--version", 2)
    monkeypatch.setattr(team_ops, "put_back", lambda changed, clients: None)
    before, code, out = fail_half_way(agents, team_file, root)
    assert code == 1, out
    with pytest.raises(AssertionError):
        assert_all_or_none(before, agents)
    assert active(agents)["helper"][0] == 3


def test_team_commands_present_the_team_admin_token(tmp_path, monkeypatch):
    """--team: the team file's admin token (as the trainer's push uses it) wins over the
    inference token in env COLLM_AUTH_TOKEN; a --token flag on the command line wins over both."""
    from collm_serve import cli as serve_cli

    seen: list[tuple[str, str | None]] = []

    def record(address, token, *rest, **kw):
        seen.append((address, token))
        raise serve_cli.CliError("recorded")

    monkeypatch.setattr(serve_cli, "_client", record)
    team_file = tmp_path / "team.yaml"
    team_file.write_text(yaml.safe_dump({"task": "toy", "admin_token": "file-admin",
                                         "agents": {"helper": {"address": "h:1"}, "main": {"address": "m:2"}}}))
    env = {"COLLM_AUTH_TOKEN": "inference", "COLLM_ADMIN_TOKEN": None}
    for args in (["rollback"], ["activate", "--version", "1"], ["swap", "--version", "1"]):
        CliRunner().invoke(main, [*args, "--team", str(team_file)], env=env)
        assert seen.pop() == ("h:1", "file-admin"), args
    CliRunner().invoke(main, ["rollback", "--team", str(team_file), "--token", "flag"], env=env)
    assert seen.pop() == ("h:1", "flag")
