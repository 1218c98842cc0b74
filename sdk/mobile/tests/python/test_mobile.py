"""End-to-end tests of the mobile SDK through its generated Python bindings.

Each test starts a real node (`switchboard dev` on a free loopback port, data in a temp dir)
and drives it over real QUIC with `switchboard_mobile`, the module UniFFI generated from
sdk/mobile: nothing here touches the Rust API. `cargo xtask test` builds the node and the
library, generates the module and runs this file; by hand:

    SWITCHBOARD_BIN=target/debug/switchboard PYTHONPATH=<generated dir> \
        python3 -m unittest discover -s sdk/mobile/tests/python -v
"""

import asyncio
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import switchboard_mobile as sb

BIN = os.environ.get("SWITCHBOARD_BIN", "switchboard")
# Generous bound for every wait: a hang fails the test instead of blocking CI.
WAIT = 20.0


class Node:
    """A `switchboard dev` node as a child process; alice's and bob's tokens from its banner."""

    def __init__(self, data_dir, port=0):
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [
                BIN,
                "dev",
                "--data-dir",
                data_dir,
                "--listen",
                f"127.0.0.1:{port}",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.tokens = []
        deadline = time.monotonic() + 60
        self.port = None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the node exited before it was ready")
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
            m = re.search(r"SWITCHBOARD_TOKEN=(\S+)", line)
            if m:
                self.tokens.append(m.group(1))
            if line.startswith("Ctrl-C stops the node"):
                break
        if self.port is None or len(self.tokens) < 2:
            raise RuntimeError("no address or tokens in the node's banner")
        self.alice, self.bob = self.tokens[0], self.tokens[1]
        with open(os.path.join(data_dir, "cert.der"), "rb") as f:
            self.cert = f.read()

    def options(self, token, **kw):
        # "localhost" goes through the resolver (127.0.0.1 and ::1; the node is on the former).
        kw.setdefault("ca_certificates", [self.cert])
        return sb.ClientOptions(server=f"localhost:{self.port}", token=token, **kw)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


class Listener(sb.EventListener):
    """Collects events from the SDK's thread; tests wait for the ones they expect."""

    def __init__(self):
        self.events = queue.Queue()

    def on_event(self, event):
        self.events.put(event)

    async def expect(self, pred, what):
        """The first event matching `pred`; events before it are returned as `skipped`."""
        deadline = time.monotonic() + WAIT
        skipped = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {WAIT}s; got {skipped}")
            try:
                event = await asyncio.to_thread(self.events.get, timeout=left)
            except queue.Empty:
                continue
            if pred(event):
                return event, skipped
            skipped.append(event)

    async def message(self):
        event, _ = await self.expect(lambda e: e.is_message(), "message")
        return event.message

    async def messages(self, n):
        return [await self.message() for _ in range(n)]

    def quiet(self):
        """The messages waiting now (none expected)."""
        got = []
        while not self.events.empty():
            e = self.events.get_nowait()
            if e.is_message():
                got.append(e.message)
        return got


class MobileSdk(unittest.IsolatedAsyncioTestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="sb-mobile-")
        self.node = Node(os.path.join(self.tmp, "node"))
        self.clients = []

    async def asyncTearDown(self):
        for c in self.clients:
            await c.shutdown()

    def tearDown(self):
        self.node.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def connect(self, token, **kw):
        listener = Listener()
        client = await sb.connect(self.node.options(token, **kw), listener)
        self.clients.append(client)
        await listener.expect(lambda e: e.is_connected(), "Connected")
        return client, listener

    async def test_connect_join_send_receive(self):
        alice, _ = await self.connect(self.node.alice)
        bob, bob_events = await self.connect(self.node.bob)
        self.assertEqual(await alice.join("general"), 0)
        await bob.join("general")
        receipt = await alice.send("general", b"hello from python")
        self.assertEqual(receipt.seq, 1)
        self.assertFalse(receipt.duplicate)
        m = await bob_events.message()
        self.assertEqual((m.group, m.seq, m.sender), ("general", 1, "alice"))
        self.assertEqual(m.body, b"hello from python")
        self.assertEqual(m.client_msg_id, receipt.client_msg_id)
        page = await bob.fetch("general", 0, 10)
        self.assertEqual([m.body for m in page.messages], [b"hello from python"])
        self.assertEqual(page.head_seq, 1)
        self.assertEqual(bob.cursors(), [sb.Cursor(group="general", seq=1)])

    async def test_certificates_are_checked(self):
        # Default trust is the web PKI: a self-signed node is refused.
        with self.assertRaises(sb.SwitchboardError.Tls):
            await sb.connect(self.node.options(self.node.alice, ca_certificates=[]), Listener())
        # A pin must match, on top of the CA check.
        with self.assertRaises(sb.SwitchboardError.Tls):
            await sb.connect(
                self.node.options(self.node.alice, pinned_cert_sha256=[bytes(32)]), Listener()
            )
        with self.assertRaises(sb.SwitchboardError.InvalidOptions):
            await sb.connect(
                self.node.options(self.node.alice, pinned_cert_sha256=[b"short"]), Listener()
            )
        pin = sb.cert_sha256(self.node.cert)
        self.assertEqual(len(pin), 32)
        client, _ = await self.connect(self.node.alice, pinned_cert_sha256=[pin])
        self.assertGreaterEqual(await client.join("general"), 0)

    async def test_typed_errors(self):
        with self.assertRaises(sb.SwitchboardError.Unauthorized) as e:
            await sb.connect(self.node.options("sb1.not.valid"), Listener())
        self.assertEqual(e.exception.code, 10)  # InvalidToken
        alice, _ = await self.connect(self.node.alice)
        with self.assertRaises(sb.SwitchboardError.NotMember):
            await alice.send("general", b"before joining")
        with self.assertRaises(sb.SwitchboardError.GroupNotFound):
            await alice.join("no-such-group")
        await alice.join("general")
        with self.assertRaises(sb.SwitchboardError.PayloadTooLarge) as e:
            await alice.send("general", bytes(1024 * 1024))
        self.assertEqual(e.exception.len, 1024 * 1024)
        with self.assertRaises(sb.SwitchboardError.InvalidOptions):
            await alice.queue_send("general", b"no outbox configured")
        # Nothing above closed the client.
        self.assertEqual((await alice.send("general", b"still fine")).seq, 1)

    async def test_background_and_foreground_reach_co_members(self):
        alice, alice_events = await self.connect(self.node.alice)
        bob, _ = await self.connect(self.node.bob)
        await alice.join("general")
        await bob.join("general")
        await bob.background()
        await alice_events.expect(
            lambda e: e.is_presence() and e.user == "bob" and not e.foreground,
            "bob in the background",
        )
        await bob.foreground()
        await alice_events.expect(
            lambda e: e.is_presence() and e.user == "bob" and e.foreground,
            "bob in the foreground",
        )

    async def test_pause_and_resume_catch_up_exactly_what_was_missed(self):
        alice, _ = await self.connect(self.node.alice)
        bob, bob_events = await self.connect(self.node.bob)
        await alice.join("general")
        await bob.join("general")
        await alice.send("general", b"seen live")
        self.assertEqual((await bob_events.message()).body, b"seen live")

        bob.pause()
        self.assertTrue(bob.is_paused())
        await bob_events.expect(lambda e: e.is_disconnected(), "Disconnected")
        for i in range(3):
            await alice.send("general", f"missed {i}".encode())
        bob.resume()
        _, before = await bob_events.expect(lambda e: e.is_connected(), "Connected again")
        self.assertFalse([e for e in before if e.is_message()], "nothing while paused")
        got = await bob_events.messages(3)
        self.assertEqual([m.seq for m in got], [2, 3, 4])
        self.assertEqual([m.body for m in got], [b"missed 0", b"missed 1", b"missed 2"])

        # A network change: the connection migrates to a new socket (or reconnects) and
        # delivery goes on, each message once.
        bob.network_changed()
        await asyncio.sleep(0.5)  # the migration's probe
        await alice.send("general", b"after the network change")
        e, between = await bob_events.expect(lambda e: e.is_message(), "message")
        self.assertEqual((e.message.seq, e.message.body), (5, b"after the network change"))
        # Migrated, not reconnected: the same session carried on.
        self.assertFalse([e for e in between if e.is_disconnected() or e.is_connected()])
        await asyncio.sleep(0.5)
        self.assertEqual(bob_events.quiet(), [])

    async def test_reconnect_after_the_node_restarts(self):
        alice, _ = await self.connect(self.node.alice)
        bob, bob_events = await self.connect(self.node.bob)
        await alice.join("general")
        await bob.join("general")
        await alice.send("general", b"before the restart")
        self.assertEqual((await bob_events.message()).seq, 1)

        port = self.node.port
        await asyncio.to_thread(self.node.stop)
        await bob_events.expect(lambda e: e.is_disconnected(), "Disconnected")
        # Started off the event loop: it blocks until the node printed its banner.
        self.node = await asyncio.to_thread(Node, self.node.data_dir, port)
        # Bob reconnects by himself and resumes after seq 1.
        await bob_events.expect(lambda e: e.is_connected(), "Connected after the restart")
        receipt = await alice.send("general", b"after the restart")
        self.assertEqual(receipt.seq, 2)
        m = await bob_events.message()
        self.assertEqual((m.seq, m.body), (2, b"after the restart"))

    async def test_outbox_sends_survive_a_client_restart(self):
        outbox = os.path.join(self.tmp, "outbox")
        bob, bob_events = await self.connect(self.node.bob)
        await bob.join("general")
        alice, _ = await self.connect(self.node.alice, outbox_dir=outbox)
        await alice.join("general")

        # Offline: the sends wait on disk.
        alice.pause()
        ids = [await alice.queue_send("general", f"queued {i}".encode()) for i in range(2)]
        self.assertEqual(alice.outbox_len(), 2)
        await alice.shutdown()  # the app is killed before it is online again
        self.clients.remove(alice)
        self.assertEqual(len([f for f in os.listdir(outbox) if f.endswith(".msg")]), 2)

        # The next run opens the same outbox and sends them, with their ids.
        alice, alice_events = await self.connect(self.node.alice, outbox_dir=outbox)
        sent = []
        for _ in ids:
            e, _ = await alice_events.expect(lambda e: e.is_outbox_sent(), "OutboxSent")
            sent.append(e.client_msg_id)
        self.assertEqual(sent, ids)
        got = await bob_events.messages(2)
        self.assertEqual([m.body for m in got], [b"queued 0", b"queued 1"])
        self.assertEqual([m.client_msg_id for m in got], ids)
        self.assertEqual(alice.outbox_len(), 0)
        self.assertEqual([f for f in os.listdir(outbox) if f.endswith(".msg")], [])

        # Online sends go through the outbox too and leave nothing behind.
        receipt = await alice.send("general", b"online send")
        self.assertEqual(receipt.seq, 3)
        self.assertEqual((await bob_events.message()).body, b"online send")
        self.assertEqual(alice.outbox_len(), 0)


if __name__ == "__main__":
    unittest.main()
