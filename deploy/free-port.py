"""Prints a loopback port nothing listens on, for the deploy/ test scripts. It is drawn from below
the kernel's ephemeral range (net.ipv4.ip_local_port_range): a port found by binding 0 and
released can be handed to an outgoing connection before the bridge binds it; one below the range
can only be taken by a process binding that very number."""
import random
import socket

with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    low = int(f.read().split()[0])
for _ in range(100):
    port = random.randrange(max(1024, low - 12000), low)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port below the ephemeral range")
