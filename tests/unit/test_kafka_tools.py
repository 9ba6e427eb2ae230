"""`edpo kafka`: which Kafka tool runs with which arguments, and what reaches the user."""

from __future__ import annotations

import pytest

from edpo.config import Settings
from edpo.dev.kafka import TOOLS, command, tool_arguments, without_stack_frames
from edpo.dev.process import StackError


def test_groups_describes_one_group_or_all() -> None:
    assert tool_arguments("groups", group="edpo-order") == ["--describe", "--group", "edpo-order"]
    assert tool_arguments("groups") == ["--describe", "--all-groups"]


def test_topics_lists_or_describes_one() -> None:
    assert tool_arguments("topics") == ["--list"]
    assert tool_arguments("topics", topic="order-events") == ["--describe", "--topic", "order-events"]


def test_consume_prints_keys_and_times_and_stops_when_asked() -> None:
    args = tool_arguments("consume", topic="dead-letters", from_beginning=True, max_messages=3)
    assert args[:2] == ["--topic", "dead-letters"]
    assert "print.key=true" in args and "print.timestamp=true" in args
    assert args[-3:] == ["--from-beginning", "--max-messages", "3"]
    assert "--max-messages" not in tool_arguments("consume", topic="t")


def test_an_unknown_verb_is_refused() -> None:
    with pytest.raises(StackError, match="unknown kafka verb"):
        tool_arguments("lag")


def test_command_runs_the_tool_class_against_the_stacks_broker_with_extra_arguments_last(tmp_path) -> None:
    settings = Settings(run_dir=tmp_path, kafka_port=49999)
    (tmp_path / "kafka").mkdir()
    classpath = tmp_path / "kafka" / "classpath.txt"
    classpath.write_text("/jars/a.jar:/jars/b.jar\n")
    # Newer than the pom, so Maven is not asked.
    argv = command(settings, "groups", ["--describe", "--all-groups"], ["--state"])
    main = argv.index(TOOLS["groups"])
    assert argv[argv.index("-cp") + 1] == "/jars/a.jar:/jars/b.jar"
    assert argv[main + 1:] == ["--bootstrap-server", "127.0.0.1:49999", "--describe", "--all-groups", "--state"]


def test_stack_frames_are_left_out_of_what_the_tool_says() -> None:
    said = ("java.util.concurrent.ExecutionException: GroupIdNotFoundException: Group x not found.\n"
            "\tat java.base/java.util.concurrent.CompletableFuture.reportGet(CompletableFuture.java:396)\n"
            "\t... 3 more\n"
            "Caused by: GroupIdNotFoundException: Group x not found.\n")
    assert without_stack_frames(said) == ("java.util.concurrent.ExecutionException: GroupIdNotFoundException: "
                                          "Group x not found.\nCaused by: GroupIdNotFoundException: Group x not found.\n")
