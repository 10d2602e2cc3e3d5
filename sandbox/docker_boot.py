"""The first program of every Docker job: unpack the job from stdin, then become the job.

The bundle is in `marshal` format: python3-minimal images have no `json` module. It runs
inside the container as uid 65534. Files are created with O_NOFOLLOW|O_EXCL in the
empty tmpfs work dir, so no name can be a symlink or overwrite another (Judge0's CVEs came
from following one). The job's stdin travels in the bundle and reaches the program as a
memfd: the exec's own stream is never half-closed, which TLS to a remote engine cannot do.
Then it `exec`s the program in its place.
"""

BOOT = r"""
import marshal, os, sys
def read_exactly(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            sys.exit(125)
        data += chunk
    return data
size = int(read_exactly(10))
bundle = marshal.loads(read_exactly(size))
for name, content in bundle["files"].items():
    parent = os.path.dirname(name)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.write(fd, content.encode())
    os.close(fd)
stdin = os.memfd_create("stdin")
data = bundle["stdin"].encode()
while data:
    data = data[os.write(stdin, data):]
os.lseek(stdin, 0, os.SEEK_SET)
os.dup2(stdin, 0)
os.close(stdin)
os.execve(bundle["argv"][0], bundle["argv"], bundle["env"])
"""

# rlimits from the shell: python3-minimal has no `resource` module. RLIMIT_CPU is per process
# here (SIGXCPU at the soft limit, SIGKILL a second later); the wall clock is enforced from outside.
LAUNCH = (
    # Soft first: a soft limit above the hard one would be refused.
    "ulimit -c 0 && ulimit -S -t {cpu_s} && ulimit -H -t {hard_cpu_s} && "
    'exec /usr/bin/python3 -c "$0"'
)

HEADER_DIGITS = 10  # the bundle's length, zero-padded, before the bundle itself
