"""Hostile: `hostile-latent-trap` in Python.

Every hook behaves, so the upload self-test passes, until a message's body starts with
`!boom`: then `on_message` raises, and an uncaught exception is a trap. A node must fall back
on such calls and roll the version back when it keeps failing, as it does for the Rust plugin.

Ordinary messages go to the low lane, so tests can tell this version's verdicts apart.
"""

from typing import List

from wit_world import exports
from wit_world.imports.types import (
    Delivery,
    Flag,
    FlagContext,
    Lane,
    LoadInfo,
    MessageInfo,
    ReceiptAction,
    ReceiptInfo,
    Shedding,
    Verdict,
    Verdict_Accept,
)


class Policy(exports.Policy):
    def on_message(self, message: MessageInfo) -> Verdict:
        if bytes(message.body_prefix).startswith(b"!boom"):
            raise RuntimeError("hostile-latent-trap-py: the bug real traffic finds")
        return Verdict_Accept(Delivery(Lane.LOW, False))

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
