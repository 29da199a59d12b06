#!/usr/bin/env python3
# Vendored unchanged from the shared lab (../shared/netlab/netdelay.py); netlab.sh runs it.
"""Fixed packet delay through an NFQUEUE, for kernels without sch_netem (stdlib only).

  netdelay.py --queue N --delay MS [--maxlen PACKETS] [--pidfile FILE]

Binds netfilter queue N (needs root in the namespace that holds the
NFQUEUE rules), holds every queued packet for MS milliseconds and then
accepts it. Packets leave in arrival order. Loss and rate limits are not
done here: netlab.sh uses iptables "-m statistic" and tc tbf for those.

netlab.sh starts one instance per shaped router ("netlab.sh shape ... --delay")
inside the inet namespace and stops it by PID. On SIGTERM or SIGINT it first
releases every packet it still holds, then exits.
"""
import argparse
import collections
import errno
import os
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1


class Stop(Exception):
    pass


def attr(atype, data):
    n = 4 + len(data)
    return struct.pack("=HH", n, atype) + data + b"\0" * (-n % 4)


def message(queue, msg_type, attrs, flags, seq=0):
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    mtype = (NFNL_SUBSYS_QUEUE << 8) | msg_type
    return struct.pack("=IHHII", 16 + len(body), mtype, NLM_F_REQUEST | flags, seq, 0) + body


def config(sock, queue, seq, attrs):
    """Send one config request and wait for its ACK; raise OSError on a kernel error."""
    sock.send(message(queue, NFQNL_MSG_CONFIG, attrs, NLM_F_ACK, seq))
    while True:
        data = sock.recv(65536)
        pos = 0
        while pos + 16 <= len(data):
            length, mtype, _, rseq, _ = struct.unpack_from("=IHHII", data, pos)
            if mtype == NLMSG_ERROR and rseq == seq:
                err = -struct.unpack_from("=i", data, pos + 16)[0]
                if err:
                    raise OSError(err, "queue %d config: %s" % (queue, os.strerror(err)))
                return
            pos += max(16, (length + 3) & ~3)


def packet_ids(data):
    """Yield the packet id of every NFQNL_MSG_PACKET in one netlink datagram."""
    pos = 0
    while pos + 16 <= len(data):
        length, mtype, _, _, _ = struct.unpack_from("=IHHII", data, pos)
        if length < 16:
            return
        if mtype == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            apos, end = pos + 20, pos + length
            while apos + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, apos)
                if alen < 4:
                    break
                if atype & 0x3FFF == NFQA_PACKET_HDR:
                    yield struct.unpack_from("!I", data, apos + 4)[0]
                    break
                apos += (alen + 3) & ~3
        pos += (length + 3) & ~3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queue", type=int, required=True)
    ap.add_argument("--delay", type=float, required=True, help="milliseconds")
    ap.add_argument("--maxlen", type=int, default=10000, help="packets held at most (kernel drops beyond)")
    ap.add_argument("--pidfile")
    a = ap.parse_args()
    delay = a.delay / 1000.0

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    config(sock, a.queue, 1, [attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET))])
    config(sock, a.queue, 2, [attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))])
    config(sock, a.queue, 3, [attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", a.maxlen))])
    if a.pidfile:
        with open(a.pidfile, "w") as f:
            f.write("%d\n" % os.getpid())
    print("netdelay: queue %d bound, delay %.3f ms, pid %d" % (a.queue, a.delay, os.getpid()), flush=True)

    def verdict(last_id):  # accepts every queued packet with id <= last_id
        sock.send(message(a.queue, NFQNL_MSG_VERDICT_BATCH,
                          [attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last_id))], 0))

    def stop(*_):
        raise Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    held = collections.deque()  # (release time, packet id), in arrival order
    last_seen = None
    try:
        while True:
            timeout = None if not held else max(0.0, held[0][0] - time.monotonic())
            ready, _, _ = select.select([sock], [], [], timeout)
            now = time.monotonic()
            if ready:
                while True:
                    try:
                        data = sock.recv(65536, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno == errno.ENOBUFS:
                            continue
                        raise
                    for pid in packet_ids(data):
                        held.append((now + delay, pid))
                        last_seen = pid
            last = None
            while held and held[0][0] <= now:
                last = held.popleft()[1]
            if last is not None:
                verdict(last)
    except Stop:
        pass
    finally:
        if last_seen is not None:
            try:
                verdict(last_seen)
            except OSError:
                pass
        print("netdelay: queue %d stopped" % a.queue, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
