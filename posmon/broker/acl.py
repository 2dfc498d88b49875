"""The broker's ACL, made from the fleet registry: who may publish and read which topics.

A pure function of the registry: `render(fleet)` is the text of mosquitto's `acl_file`.
Once mosquitto has an ACL file it denies every topic not granted to the login (and an
anonymous client gets nothing), so each login gets exactly the lines of its role:

- agent: writes its own tids' `txn`, `status` and `batch`, its own presence (retained,
  and its will), its own `doctor` topic (`posmon agent doctor`) and `deadletter`; reads
  nothing (the agent subscribes to nothing).
- collector: reads `terminals/+/txn|status|batch`, `agents/+/presence`, `settlements`
  and `deadletter`; writes `deadletter` (what it cannot ingest).
- the collector's alert login (`<id>-alerts`): writes `alerts/+`; reads nothing.
- acquirer: writes `settlements`; reads nothing (there are no reply topics).
- viewer: reads `alerts/+` and `agents/+/presence`; writes nothing.
- admin: reads and writes everything under the prefix.

Agents get explicit `user` blocks with a line per terminal: mosquitto's `pattern` lines can
substitute the login (%u) or client id (%c) into a topic, but a terminal id is neither, and
"the tids of this login" cannot be said with a pattern.

What mosquitto 2.0 does with a subscription the ACL does not cover (tested in
tests/test_broker_acl.py): the SUBSCRIBE is granted (SUBACK with the QoS asked, for `#`
and for any exact topic alike) and the check happens per message at delivery, so the
subscriber receives only the messages its read lines allow, retained ones included.
A publish the ACL refuses is dropped; with MQTT 3.1.1 the publisher still gets a normal
PUBACK, with MQTT 5 a PUBACK with reason 0x87 (not authorised). A will on a topic the
login may not write is accepted at CONNECT and dropped when it would be sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from posmon.broker.fleet import ALERTS_SUFFIX, Fleet, LoginSpec, Role

TERMINAL_KINDS = ("txn", "status", "batch")


class Access(StrEnum):
    READ = "read"
    WRITE = "write"
    READWRITE = "readwrite"


@dataclass(frozen=True, slots=True)
class Rule:
    """One `topic ACCESS TOPIC` line of the ACL file."""

    access: Access
    topic: str

    def line(self) -> str:
        return f"topic {self.access.value} {self.topic}"


def rules(login: LoginSpec, prefix: str) -> list[Rule]:
    """The topics one login may use, by its role."""
    write, read, both = Access.WRITE, Access.READ, Access.READWRITE
    # The contract's topics, as posmon.mqtt.Topics names them (a test keeps the two the
    # same): posmon.mqtt is the paho adapter, which this admin tooling does not need.
    terminals = f"{prefix}/terminals"
    presence = f"{prefix}/agents/{{}}/presence"
    settlements, deadletter = f"{prefix}/settlements", f"{prefix}/deadletter"
    match login.role:
        case Role.AGENT:
            return [
                *(
                    Rule(write, f"{terminals}/{tid}/{kind}")
                    for tid in login.tids
                    for kind in TERMINAL_KINDS
                ),
                Rule(write, presence.format(login.name)),
                # Where `posmon agent doctor` proves that the broker takes this login's
                # messages (agent/doctor.py); no one reads it.
                Rule(write, f"{prefix}/agents/{login.name}/doctor"),
                Rule(write, deadletter),
            ]
        case Role.COLLECTOR:
            return [
                *(Rule(read, f"{terminals}/+/{kind}") for kind in TERMINAL_KINDS),
                Rule(read, presence.format("+")),
                Rule(read, settlements),
                Rule(both, deadletter),
            ]
        case Role.COLLECTOR_ALERTS:
            return [Rule(write, f"{prefix}/alerts/+")]
        case Role.ACQUIRER:
            return [Rule(write, settlements)]
        case Role.VIEWER:
            return [Rule(read, f"{prefix}/alerts/+"), Rule(read, presence.format("+"))]
        case Role.ADMIN:
            return [Rule(both, f"{prefix}/#")]


def render(fleet: Fleet) -> str:
    """The text of mosquitto's `acl_file` for the whole fleet."""
    lines = [
        "# posmon broker ACL, written by `posmon broker provision` from the fleet registry:",
        "# do not edit, edit the registry (docs/security.md). Everything not granted to a",
        "# login here is denied; anonymous clients get nothing.",
    ]
    for login in fleet.logins():
        lines += ["", f"# {_describe(login)}", f"user {login.name}"]
        lines += [rule.line() for rule in rules(login, fleet.topic_prefix)]
    return "\n".join(lines) + "\n"


def _describe(login: LoginSpec) -> str:
    match login.role:
        case Role.AGENT:
            return f"agent {login.name}: terminals {', '.join(login.tids)}"
        case Role.COLLECTOR_ALERTS:
            collector = login.name.removesuffix(ALERTS_SUFFIX)
            return f"collector {collector}'s alert connection"
        case _:
            return f"{login.role.value} {login.name}"
