# Process configuration for the hardened example agent: 2 workers per core on a 2-CPU limit.
# Rate limits and nonces live in Redis (ASAP_RATE_LIMIT_BACKEND), so several workers share them.
bind = "127.0.0.1:8000"
workers = 4
worker_class = "uvicorn.workers.UvicornWorker"
graceful_timeout = 20
