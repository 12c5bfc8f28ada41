"""The first code a worker runs where the engine cannot see this machine's files (``workers.transport: remote``).

Nothing is bind-mounted there, so the worker runtime itself arrives over the worker channel: this program
(passed as ``python3 -c SOURCE``, so it is in the plan, visible in the dry-run) connects to the
orchestrator's TCP endpoint over TLS (the certificate must match the run's pin, ``MAHABHARATHA_CHANNEL_PIN``),
proves which worker it is with its token, takes its credentials (the API key,
a copy of the Claude login) as environment variables, fetches the runtime package (a tar) into
``RUNTIME_DIR`` and runs it. Credentials never pass through the engine: an engine writes a container's
environment to its disk (its metadata database keeps it after the container is gone), and a remote disk is
not ours to clean. Only the token does (on Docker Swarm as a Swarm secret, a file under
``$MAHABHARATHA_SECRETS_DIR``): made for one run, it opens nothing once the run has ended.

With ``MAHABHARATHA_BOOTSTRAP_ONLY=1`` it only fetches (a Kubernetes init container fills an ``emptyDir``).
Standard library only, kept short: it is part of every remote worker's command line.
"""

from __future__ import annotations

__all__ = ["SOURCE", "RUNTIME_DIR", "COMMAND"]

RUNTIME_DIR = "/tmp/mahabharatha-lib"

SOURCE = """\
import io,json,os,socket,sys,tarfile
E=os.environ;L=E.get("MAHABHARATHA_RUNTIME_DIR","%(lib)s");D=E.get("MAHABHARATHA_SECRETS_DIR")
for n in sorted(os.listdir(D)) if D and os.path.isdir(D) else ():
    E[n]=open(os.path.join(D,n)).read()
h,_,p=E["MAHABHARATHA_CHANNEL"].split("://",1)[1].rpartition(":")
import hashlib,ssl;c=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT);c.check_hostname=False;c.verify_mode=ssl.CERT_NONE
s=c.wrap_socket(socket.create_connection((h.strip("[]"),int(p)),60))
if hashlib.sha256(s.getpeercert(True)).hexdigest()!=E.get("MAHABHARATHA_CHANNEL_PIN"):sys.exit("bootstrap: the orchestrator's certificate is not this run's")
f=s.makefile("rb")
def ask(m):
    s.sendall(json.dumps(m).encode()+b"\\n");r=json.loads(f.readline() or "{}")
    if not r.get("ok"):sys.exit("bootstrap: the orchestrator refused: %%s"%%r.get("error","no answer"))
    return r
ask({"op":"auth","token":E["MAHABHARATHA_CHANNEL_TOKEN"]});E.update(ask({"op":"secrets"}).get("env") or {})
n=ask({"op":"runtime"})["blob"];b=f.read(n);s.close()
if len(b)!=n:sys.exit("bootstrap: the runtime arrived short")
t=tarfile.open(fileobj=io.BytesIO(b))
try:t.extractall(L,filter="data")
except TypeError:t.extractall(L)
if E.get("MAHABHARATHA_BOOTSTRAP_ONLY")=="1":sys.exit(0)
E["PYTHONPATH"]=L;sys.path.insert(0,L);sys.path_importer_cache.pop(L,None);import runpy;runpy.run_module("mahabharatha_worker",run_name="__main__",alter_sys=True)
""" % {"lib": RUNTIME_DIR}

COMMAND = ("python3", "-c", SOURCE)
