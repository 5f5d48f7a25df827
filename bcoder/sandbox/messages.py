"""The framing on the pool's sockets to its workers and judges: a 4-byte big-endian length, then
UTF-8 JSON, with file descriptors passed alongside (SCM_RIGHTS) and raw bytes after it where the
message says how many. Standard library only."""
import fcntl
import json
import os
import socket
import struct


def send(sock, message, fds=(), files=()):
    """Sends a message (a JSON-able value, or its encoding as bytes) and file descriptors, then
    the first `count` bytes of each (fd, count) in `files`, copied by the kernel (sendfile): they
    never enter this process."""
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    frame = struct.pack(">I", len(data)) + data
    sent = socket.send_fds(sock, [frame], list(fds)) if fds else 0
    sock.sendall(frame[sent:])
    for fd, count in files:
        offset = 0
        while offset < count:
            sent = os.sendfile(sock.fileno(), fd, offset, count - offset)
            if sent == 0:                 # the file shrank: the other side still gets `count` bytes
                sock.sendall(bytes(count - offset))
                break
            offset += sent


def sealed(data):
    """A memfd holding `data` that no one can write to, grow or shrink any more."""
    fd = os.memfd_create("data", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    return fd


class Reader:
    """The messages and raw bytes a worker or judge sends the pool (which pass no file descriptors),
    read as they come in as few system calls as possible: a reply and the outputs after it usually
    take one."""

    def __init__(self, sock):
        self.sock, self.buffer = sock, bytearray()

    def receive_bytes(self, count):
        """The next `count` bytes; EOFError if the other side closed first."""
        while len(self.buffer) < count:
            chunk = self.sock.recv(max(count - len(self.buffer), 1 << 16))
            if not chunk:
                raise EOFError("the other side closed")
            self.buffer += chunk
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def receive(self):
        """The next message; None once the other side has closed."""
        try:
            return json.loads(self.receive_bytes(struct.unpack(">I", self.receive_bytes(4))[0]))
        except EOFError:
            return None


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
