"""What every job starts with (`import _job` first) and ends with (`_job.run(main)`).

Bootstrap: `python jobs/x.py` from a checkout finds `lmc` and `pipeline` (the repo root goes on
sys.path, and on PYTHONPATH for the Ray workers this process starts).

Error policy: bad input (a config value, a path, shards or a checkpoint that do not fit, a
storage that cannot be written, a non-finite loss) ends the job with exit status 1 and one line,
`error: <what, where, the allowed values or the fix>`, never a traceback. A training run
stopped by SIGINT / SIGTERM (checkpointed first) ends with one `stopped:` line and 128 + the
signal's number. The project's errors
all derive from ValueError, OSError or FloatingPointError; anything else is a bug and keeps its
traceback. LMC_TRACEBACK=1 shows the traceback of the handled errors too.
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

USER_ERRORS = (ValueError, OSError, FloatingPointError)


def run(main, argv=None):
    """``main(argv)`` under the error policy above."""
    try:
        return main(argv)
    except USER_ERRORS as e:
        if os.environ.get("LMC_TRACEBACK"):
            raise
        sys.stdout.flush()
        sys.exit(f"error: {e}")
    except Exception as e:
        if type(e).__name__ != "RunStopped":      # a run asked to stop, and stopped
            raise
        import signal
        sys.stdout.flush()
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(128 + getattr(signal, e.signal_name, signal.SIGINT))
    except KeyboardInterrupt:
        sys.exit(130)
