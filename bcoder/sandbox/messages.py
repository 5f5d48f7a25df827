"""The framing on the pool's sockets to its workers and judges: a 4-byte big-endian length, then
UTF-8 JSON, with file descriptors passed alongside (SCM_RIGHTS). Standard library only."""
import json
import socket
import struct


def send(sock, message, fds=()):
    """Sends a message (a JSON-able value, or its encoding as bytes) and file descriptors."""
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    frame = struct.pack(">I", len(data)) + data
    sent = socket.send_fds(sock, [frame], list(fds)) if fds else 0
    sock.sendall(frame[sent:])


def receive(sock):
    """(message, fds) of the next message, or (None, []) once the other side has closed."""
    header, fds = b"", []
    while len(header) < 4:
        data, received, _, _ = socket.recv_fds(sock, 4 - len(header), 4)
        if not data:
            return None, fds
        header, fds = header + data, fds + received
    size = struct.unpack(">I", header)[0]
    body = bytearray()
    while len(body) < size:
        chunk = sock.recv(min(size - len(body), 1 << 20))
        if not chunk:
            return None, fds
        body += chunk
    return json.loads(body), fds
