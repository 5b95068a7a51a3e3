"""Gunicorn settings for one ASR worker.

Start it with:  gunicorn -c deploy/gunicorn.conf.py 'app:create_app()'
Address, port and name come from the same ASR_* settings the app reads.
"""

from app.settings import Settings

_settings = Settings.from_env()

# Loopback by default: only Nginx, on the same machine, should reach a worker.
bind = f"{_settings.host}:{_settings.port}"

# One process per model: a second process would load a second copy of the
# weights. Concurrency comes from threads, and batching from the app's single
# inference thread.
workers = 1

# gthread: handler threads wait on the batcher while the main thread keeps
# accepting, so /health answers while a long inference runs.
worker_class = "gthread"
# gthread hands connections to its threads first come, first served, and a
# transcription holds its thread until it is answered. The app admits at most
# ASR_MAX_CONCURRENT transcriptions (app/admission.py); the reserve above that
# is for /health, /stats, /metrics and the instant 503s of refused requests,
# so the poller's /health never queues behind transcriptions.
HEALTH_RESERVE_THREADS = 4
threads = _settings.max_concurrent_requests + HEALTH_RESERVE_THREADS

# Never load the app in the master: CUDA state does not survive fork, and the
# model must load in the process that will use it.
preload_app = False

# The master kills a worker silent for this long. gthread workers heartbeat
# from their main loop, not from request threads, so it needs only to cover
# stalls of the main loop, but it stays above the longest inference
# (ASR_REQUEST_TIMEOUT) so a slow request is never mistaken for a hang.
timeout = int(_settings.request_timeout_seconds) + 30

# On SIGTERM: stop accepting, let queued requests finish. Supervisor's
# stopwaitsecs must be larger than this.
graceful_timeout = 30

# Nginx keeps idle upstream connections open; hold ours a little longer than
# Nginx's keepalive_timeout so Nginx, not us, closes them first.
keepalive = 75

# A new process per worker start; never recycle a worker that holds a loaded
# model just because it served many requests.
max_requests = 0

proc_name = _settings.instance_name
# Logs to stderr: Supervisor captures and rotates them. No access log: the
# app logs every transcription with its status, time, request ID and error
# reason, and Nginx keeps the fleet's access log.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level

# Gunicorn's control socket lives at one path per user ($HOME/.gunicorn), so
# every worker of a fleet would fight over it. Supervisor is our control.
control_socket_disable = True



def post_worker_init(worker):
    """Ends this worker within 0.2 s of its master's death.

    A master killed with SIGKILL cannot stop its worker. Left alone, the
    worker notices within a second but keeps the inherited listening socket
    while it finishes what it holds, outside Supervisor's control and with
    its log pipe gone; meanwhile the master Supervisor starts in its place
    cannot bind the port ("Connection in use"), exits, and after startretries
    such failures the instance is FATAL. Exiting at once frees the port for
    the new master; Nginx replays the requests this worker held on another
    instance (a dropped connection is retried; nothing was answered twice),
    and the decoder process exits when its pipe closes.
    """
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == worker.ppid:
            time.sleep(0.2)
        worker.log.warning("master %s is gone: exiting so a new master can bind the port", worker.ppid)
        os._exit(1)

    threading.Thread(target=watch, name="master-watch", daemon=True).start()
