"""Kafka's own command-line tools against the stack's broker: `edpo kafka groups|topics|consume`.

The install resolves Kafka from Maven Central (infra/kafka/pom.xml), the broker and
`kafka-tools`, into one classpath (RUN_DIR/kafka/classpath.txt); each verb runs one tool's main
class with it, the way Kafka's own `kafka-consumer-groups.sh`, `kafka-topics.sh` and
`kafka-console-consumer.sh` do, with `--bootstrap-server` set to the stack's broker. Arguments
after `--` go to the tool unchanged.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence

from edpo.config import Settings
from edpo.dev.process import StackError
from edpo.dev.servers import Kafka, require_tool

# The classes behind Kafka's scripts (Kafka 4.1: all in kafka-tools).
TOOLS = {
    "groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "topics": "org.apache.kafka.tools.TopicCommand",
    "consume": "org.apache.kafka.tools.consumer.ConsoleConsumer",
}


def tool_arguments(verb: str, *, group: str | None = None, topic: str | None = None, from_beginning: bool = False,
                   max_messages: int | None = None) -> list[str]:
    """The tool's own arguments for a verb (without --bootstrap-server)."""
    match verb:
        case "groups":
            # Every partition of the group(s): current offset, log end offset, lag, and the member holding it.
            return ["--describe", *(["--group", group] if group else ["--all-groups"])]
        case "topics":
            return ["--describe", "--topic", topic] if topic else ["--list"]
        case "consume":
            if not topic:
                raise StackError("consume needs a topic")
            args = ["--topic", topic, "--property", "print.key=true", "--property", "print.timestamp=true"]
            if from_beginning:
                args.append("--from-beginning")
            if max_messages is not None:
                args += ["--max-messages", str(max_messages)]
            return args
    raise StackError(f"unknown kafka verb {verb!r}; expected one of {', '.join(TOOLS)}")


def command(settings: Settings, verb: str, args: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """The java command line that runs verb's tool against the stack's broker."""
    kafka = Kafka(settings)
    classpath = kafka.ensure_classpath()
    log4j = settings.root / "infra" / "kafka" / "tools-log4j2.properties"
    return [
        require_tool("java", "Kafka's tools run on the JVM"),
        "-Xmx256m",
        "-XX:TieredStopAtLevel=1",  # a short-lived tool: start fast rather than optimise
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        classpath,
        TOOLS[verb],
        "--bootstrap-server",
        settings.kafka_bootstrap,
        *args,
        *extra,
    ]


# Lines of a Java stack trace: the tools print one under their one-line error (an unknown group, say).
_STACK_FRAME = re.compile(r"^\s+(at |\.\.\. \d+ more)")


def without_stack_frames(text: str) -> str:
    """The tool's error output with the frames of Java stack traces left out (the messages stay)."""
    return "".join(line for line in text.splitlines(keepends=True) if not _STACK_FRAME.match(line))


def run(settings: Settings, verb: str, args: Sequence[str], extra: Sequence[str] = ()) -> int:
    """Run the tool in the foreground, its output straight to this terminal, its errors without
    stack frames; its exit code (1 when it printed an error)."""
    # The console consumer's records are passed on as they come; the other tools' output is short.
    stdout = None if verb == "consume" else subprocess.PIPE
    try:
        done = subprocess.run(command(settings, verb, args, extra), check=False, stdin=subprocess.DEVNULL, stdout=stdout,
                              stderr=subprocess.PIPE, text=True)
    except KeyboardInterrupt:  # the console consumer runs until interrupted
        return 130
    sys.stdout.write(done.stdout or "")
    sys.stdout.flush()
    sys.stderr.write(without_stack_frames(done.stderr))
    # kafka-consumer-groups reports a failure ("Error: ..." on standard output) and still exits 0.
    said = (done.stdout or "").splitlines() + done.stderr.splitlines()
    if done.returncode == 0 and any(line.startswith("Error:") for line in said):
        return 1
    return done.returncode
