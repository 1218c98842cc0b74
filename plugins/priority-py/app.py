"""Reference policy in Python: the same rules as the Rust `plugins/priority`.

In order, the first that applies:
1. a body starting with `!spam` is rejected ("spam is not allowed here") and counted;
2. a sender listed in config `vip_users` (comma-separated) -> high lane, offline members
   are notified;
3. a body starting with `!urgent` -> high lane;
4. a body larger than config `large_bytes` (default 16384) -> low lane;
5. otherwise the normal lane.

Receipts, flags and load get the node's defaults.

Built with componentize-py and WASI stubbed out (`--stub-wasi`): the component imports only
`switchboard:policy/host`. The configuration is read once per instance, on the first call (not at module level: the
module's top level runs when the component is built, where there is no host to ask).
"""

from typing import List, Optional

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Delivery,
    Flag,
    FlagContext,
    Lane,
    LoadInfo,
    LogLevel,
    MessageInfo,
    ReceiptAction,
    ReceiptInfo,
    Shedding,
    Verdict,
    Verdict_Accept,
    Verdict_Reject,
)

DEFAULT_LARGE_BYTES = 16_384


class _Config:
    def __init__(self) -> None:
        vip = host.config_get("vip_users") or ""
        self.vip_users = frozenset(v.strip() for v in vip.split(",") if v.strip())
        self.large_bytes = DEFAULT_LARGE_BYTES
        raw = host.config_get("large_bytes")
        if raw is not None:
            try:
                self.large_bytes = int(raw.strip())
            except ValueError:
                host.log(LogLevel.WARN, f"large_bytes: {raw!r} is not a number; using {DEFAULT_LARGE_BYTES}")


_config: Optional[_Config] = None


def _cfg() -> _Config:
    global _config
    if _config is None:
        _config = _Config()
    return _config


class Policy(exports.Policy):
    def on_message(self, message: MessageInfo) -> Verdict:
        body = bytes(message.body_prefix)
        if body.startswith(b"!spam"):
            host.counter_add("priority_spam_rejected", 1)
            return Verdict_Reject("spam is not allowed here")
        cfg = _cfg()
        if message.sender in cfg.vip_users:
            return Verdict_Accept(Delivery(Lane.HIGH, True))
        if body.startswith(b"!urgent"):
            return Verdict_Accept(Delivery(Lane.HIGH, False))
        if message.body_size > cfg.large_bytes:
            return Verdict_Accept(Delivery(Lane.LOW, False))
        return Verdict_Accept(Delivery(Lane.NORMAL, False))

    def on_receipt(self, receipt: ReceiptInfo) -> ReceiptAction:
        return ReceiptAction.FORWARD

    def evaluate_flags(self, context: FlagContext) -> List[Flag]:
        return []

    def on_load(self, load: LoadInfo) -> Shedding:
        return Shedding(
            receipts=load.level >= 2,
            presence=load.level >= 1,
            background_delivery=load.level >= 3,
        )
