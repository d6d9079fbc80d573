"""The reliability suite also counts tests that live next to the code they test (README.md):
this keeps that index honest: each referenced test still exists under its name. Read with
`ast`, not imported, so pytest does not collect them twice."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ELSEWHERE = {
    "serve/test_security_and_limits.py": [
        "test_every_rpc_refuses_missing_or_wrong_token", "test_mtls_with_token_works_end_to_end",
        "test_client_without_the_ca_or_without_a_cert_fails",
    ],
    "serve/test_roles.py": [
        "test_inference_token_generates_but_cannot_swap", "test_admin_token_swaps_adapters_and_generates",
        "test_mtls_identities_map_to_roles", "test_trainer_push_presents_the_admin_token",
        "test_role_check_fails_against_flat_roles",
    ],
    "orchestrator/test_door.py": [
        "test_token_door", "test_tls_and_mtls_identities", "test_door_test_fails_against_an_open_door",
    ],
    "orchestrator/test_faults.py": [
        "test_agent_killed_mid_run_then_restarted", "test_collector_killed_mid_episode_then_resumed",
    ],
    "traces/test_concurrency.py": ["test_kill9_loses_nothing_acknowledged"],
    "tasks/test_sandbox_budget.py": [
        "test_every_writable_mount_is_capped_in_bytes_and_inodes", "test_host_shared_memory_outside_the_mounts_is_denied",
        "test_a_record_flood_costs_the_parent_its_budget_only", "test_a_stdout_or_stderr_flood_is_read_up_to_its_cap_only",
        "test_a_stopped_harness_ends_the_run_early", "test_a_signalled_harness_ends_the_run_early",
    ],
    "tasks/test_sandbox_concurrency.py": [
        "test_many_sandboxes_start_at_once_as_root", "test_a_failed_start_names_its_cause",
        "test_the_coding_task_retries_a_failed_start",
    ],
    "tasks/test_sandbox_escapes.py": [
        "test_network_socket_and_loopback_connect", "test_read_etc_passwd_and_parent_files",
        "test_parent_env_secret_is_invisible", "test_write_outside_work_dir", "test_fork_bomb_is_bounded",
        "test_kill_the_parent", "test_parent_unharmed_and_normal_code_passes",
    ],
}


@pytest.mark.parametrize("path", sorted(ELSEWHERE))
def test_referenced_tests_exist(path):
    tree = ast.parse((TESTS / path).read_text())
    defined = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    missing = [name for name in ELSEWHERE[path] if name not in defined]
    assert not missing, f"tests/{path} no longer has {missing}: update tests/reliability/README.md"
