"""bench/peer.py without comlrl: arguments, the skip path (alone and through run_all), and the
ratio rows' names and arithmetic. The measurements themselves need the comlrl venv (not built
by the test suite: it downloads from PyPI)."""

from __future__ import annotations

import sys

import pytest

from bench import peer, run_all


def test_defaults_are_the_issue_settings():
    args = peer.parse_args([])
    assert args.episodes == [8, 32] and args.max_tokens == 48
    assert args.algos == ["cc", "dc", "magrpo"] and args.batch == 4 and args.group == 4
    assert peer.parse_args(["--episodes", "2", "--algos", "dc,cc"]).algos == ["dc", "cc"]


@pytest.mark.parametrize("argv, fragment", [
    (["--episodes", "8,x"], "comma-separated integers"),
    (["--episodes", "0"], "must be >= 1"),
    (["--algos", "cc,ppo"], "choose from cc,dc,magrpo"),
    (["--episodes", "6"], "not a multiple of --batch 4"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["--only-venv"], "--only-venv needs --create-peer-venv"),
])
def test_bad_arguments_exit_2_naming_the_flag(argv, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        peer.parse_args(argv)
    assert e.value.code == 2
    assert fragment in capsys.readouterr().err


def test_fewer_episodes_than_a_batch_update_once():
    assert peer.parse_args(["--episodes", "2"]).episodes == [2]  # batch becomes 2: one update


def test_skips_without_comlrl(tmp_path, capsys):
    # a missing interpreter, and a real one without comlrl (this repository's venv never has it)
    assert peer.main(["--peer-python", str(tmp_path / "no-python")]) == 0
    assert capsys.readouterr().out.strip() == peer.SKIP
    assert peer.peer_version(tmp_path / "no-python") is None
    assert peer.skip_reason(sys.executable) == peer.SKIP
    assert peer.SKIP == "skipped: comlrl not importable (create with --create-peer-venv)"


def test_run_all_reports_the_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(peer, "PEER_VENV", tmp_path / "absent-venv")
    assert "peer" in run_all.discover()
    result = run_all.run_one("peer", quick=True, timeout=60)
    assert result["status"] == peer.SKIP and result["tables"] == []


def _run(side, algo, episodes, loop_s, tokens, update_s, rss, **extra):
    return {"side": side, "algo": algo, "episodes": episodes, "setup_s": 1.0, "loop_s": loop_s, "tokens": tokens,
            "update_s": update_s, "updates": 1, "peak_rss_mb": rss, **extra}


def test_ratio_rows_are_named_for_the_runner():
    results = {
        "comlrl-MAAC": _run("comlrl", "MAAC", 8, 200.0, 4000, 40.0, 10000.0),
        "collm-cc": _run("collm", "cc", 8, 100.0, 4000, 10.0, 2500.0, services_rss_mb=3000.0, critic_tokens=2000),
        "comlrl-IAC": {"error": "killed (SIGKILL: out of memory?)"},
        "collm-dc": _run("collm", "dc", 8, 100.0, 4000, 10.0, 2500.0, services_rss_mb=3000.0),
    }
    rows = {r[0]: r for r in peer.table_rows(8, results, {"tokens_per_s": 800.0, "sequences": 16})}
    assert rows["episodes/hour ÷ comlrl MAAC"][1] == "2.00"  # 288/h ÷ 144/h
    assert rows["update tokens/s ÷ comlrl MAAC"][1] == "4.00"  # 400 ÷ 100
    assert rows["trainer peak RSS ÷ comlrl MAAC"][1] == "0.25"
    assert rows["cc update tokens/s ÷ forward+backward limit"][1] == "0.50"
    assert rows["cc update work ÷ forward+backward limit"][1] == "0.75"  # (4000 + 2000) / 10 s ÷ 800
    assert "dc update work ÷ forward+backward limit" not in rows  # no critic count: no row
    assert rows["comlrl-IAC"][1] == "failed" and "episodes/hour ÷ comlrl IAC" not in rows
    # run_all keeps exactly the ratio rows of a benchmark's table
    kept = [r[1] for r in run_all.ratio_rows("peer", [{"title": "t", "rows": [list(r) for r in rows.values()]}])]
    assert "episodes/hour ÷ comlrl MAAC" in kept and "collm cc episodes/hour" not in kept
