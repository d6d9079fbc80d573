"""The orchestrator: plays a task with a team of agent services and logs every turn.

    agents.py     one async client per agent, the team's retry policy, adapter pinning
    episode.py    the episode runner: concurrent agent calls per turn, branching (group size K)
    teams.py      team config x task: build the task, check the agents, plan the episodes
    collector.py  `collect()`: N episodes, bounded concurrency, resume, clean SIGINT/SIGTERM
    progress.py   the progress bar (episodes/s, mean return so far)
    service.py    OrchestratorService over gRPC (RunEpisode, StreamEpisode) and its server

    from collm_serve.orchestrator import collect
    summary = await collect(load_team_config("team.yaml"), episodes=64, split="train")
"""

from collm_serve.orchestrator.agents import AdapterPins, AgentCallError, AgentPool, AgentReply
from collm_serve.orchestrator.collector import CollectSummary, EpisodeFailure, collect
from collm_serve.orchestrator.episode import (
    MAX_TREE_TURNS,
    EpisodeRunner,
    TreeTooLargeError,
    check_tree,
    tree_turns,
)
from collm_serve.orchestrator.events import (
    AgentActed,
    EpisodeFinished,
    EpisodeOutcome,
    EpisodeStarted,
    TurnStored,
)
from collm_serve.orchestrator.teams import build_task, default_team, plan_episodes

__all__ = [
    "MAX_TREE_TURNS",
    "AdapterPins",
    "AgentActed",
    "AgentCallError",
    "AgentPool",
    "AgentReply",
    "CollectSummary",
    "EpisodeFailure",
    "EpisodeFinished",
    "EpisodeOutcome",
    "EpisodeRunner",
    "EpisodeStarted",
    "TreeTooLargeError",
    "TurnStored",
    "build_task",
    "check_tree",
    "collect",
    "default_team",
    "plan_episodes",
    "tree_turns",
]
