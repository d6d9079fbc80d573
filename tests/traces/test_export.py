"""Flat exports: datasets reads them; JSONL imports back to identical episodes."""

from __future__ import annotations

import json

import pytest

from collm_serve.traces.export import COLUMNS, export_jsonl, export_parquet, import_jsonl
from collm_serve.traces.store import TraceStore
from tests.traces.helpers import make_episode, write_branching, write_linear


@pytest.fixture
def filled(tmp_path):
    with TraceStore(tmp_path / "src.db") as s:
        branching = write_branching(s)  # 6 turns x 2 agents = 12 rows
        linear = write_linear(s, 2, 0.5, task="writing")  # 4 rows
        write_linear(s, 1, None, status="failed")  # 2 rows, not exported by default
        empty = make_episode(problem_id="empty")
        s.begin_episode(empty)
        s.finish_episode(empty.episode_id, "failed", None, "engine down")  # 1 placeholder row
        yield s, [branching, linear]


@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return str(tmp_path / "hf_cache")


def test_datasets_reads_jsonl_and_parquet(filled, tmp_path, hf_offline):
    datasets = pytest.importorskip("datasets")
    store, (branching, _) = filled
    jsonl, parquet = tmp_path / "t.jsonl", tmp_path / "t.parquet"
    assert export_jsonl(store, jsonl) == 16
    assert export_parquet(store, parquet, row_group_rows=5) == 16
    for kind, path in (("json", jsonl), ("parquet", parquet)):
        ds = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=hf_offline)
        assert ds.num_rows == 16, kind
        assert ds.column_names == list(COLUMNS), kind
        # 35 columns before: observation (JSON string) and response_text became the chat-message
        # columns prompt and completion, and logprob_sum was added
        assert len(ds.column_names) == 36
        first = ds[0]
        turn = branching.turns[0]
        action = turn.actions[0]
        assert first["episode_id"] == branching.episode_id
        assert (first["agent"], first["turn_id"]) == (action.agent, turn.turn_id)
        assert first["response_token_ids"] == action.response_token_ids
        assert first["logprobs"] == action.logprobs  # float64 all the way
        assert first["logprob_sum"] == pytest.approx(sum(action.logprobs), abs=1e-12)
        # chat messages, not a JSON string: what TRL's conversational datasets and verl's prompt_key read
        assert first["prompt"] == action.observation
        assert first["completion"] == [{"role": "assistant", "content": action.response_text}]
        for column in ("prompt", "completion"):
            feature = ds.features[column]
            inner = getattr(feature, "feature", None) or feature[0]  # List(...) or [ {...} ]
            assert set(inner) == {"role", "content"}, (kind, feature)
        assert (first["reward"], first["adapter_version"]) == (turn.reward, action.adapter_version)
        assert ds.filter(lambda r: r["turn_id"] is None).num_rows == 0  # ok episodes only
    assert export_jsonl(store, jsonl, task="writing") == 4
    assert export_parquet(store, parquet, status="failed") == 3
    assert export_parquet(store, parquet, task="nothing") == 0


def test_jsonl_import_round_trip(filled, tmp_path):
    store, _ = filled
    path = tmp_path / "all.jsonl"
    assert export_jsonl(store, path, status=None) == 19
    assert not (tmp_path / "all.jsonl.tmp").exists()
    with TraceStore(tmp_path / "dst.db") as dst:
        write_linear(dst, 3, 9.0, problem_id="already-here")  # turn ids will differ
        assert import_jsonl(dst, path) == 4
        assert import_jsonl(dst, path, skip_existing=True) == 0
        with pytest.raises(ValueError, match="cannot be inserted"):
            import_jsonl(dst, path)
        src = list(store.iter_episodes(status=None))
        got = {e.episode_id: e for e in dst.iter_episodes(status=None)}
        for e in src:
            back = got[e.episode_id]
            # same tree, new turn ids: compare with ids mapped by write order
            mapping = {a.turn_id: b.turn_id for a, b in zip(e.turns, back.turns, strict=True)}
            mapping[None] = None
            for t in e.turns:
                t.turn_id, t.parent_turn_id = mapping[t.turn_id], mapping[t.parent_turn_id]
            assert back == e
        assert dst.integrity_check() == "ok"


def test_import_rejects_scrambled_rows(filled, tmp_path):
    store, _ = filled
    path = tmp_path / "t.jsonl"
    export_jsonl(store, path)
    lines = path.read_text().splitlines()
    (tmp_path / "scrambled.jsonl").write_text("\n".join([lines[0], lines[-2], lines[1]]) + "\n")
    with TraceStore(":memory:") as dst, pytest.raises(ValueError, match="not contiguous"):
        import_jsonl(dst, tmp_path / "scrambled.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with TraceStore(":memory:") as dst, pytest.raises(ValueError, match="bad.jsonl:1"):
        import_jsonl(dst, tmp_path / "bad.jsonl")


def test_import_reads_exports_of_the_previous_format(filled, tmp_path):
    """Files exported before prompt/completion were chat messages still import."""
    store, (branching, _) = filled
    path = tmp_path / "old.jsonl"
    export_jsonl(store, path, task="coding", status="ok")
    old_rows = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        row["observation"] = json.dumps(row.pop("prompt"))
        row["response_text"] = row.pop("completion")[0]["content"]
        del row["logprob_sum"]
        old_rows.append(json.dumps(row))
    path.write_text("\n".join(old_rows) + "\n")
    with TraceStore(":memory:") as dst:
        assert import_jsonl(dst, path) == 1
        back = dst.get_episode(branching.episode_id)
        assert [a.observation for t in back.turns for a in t.actions] == [
            a.observation for t in branching.turns for a in t.actions]
        assert [a.response_text for t in back.turns for a in t.actions] == [
            a.response_text for t in branching.turns for a in t.actions]
