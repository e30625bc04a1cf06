"""The exception tree. Every error a user can cause or meet is one of these, with a message
that is one clear sentence; the CLI prints it and exits with the class's exit code.

RunbookError
├── ParamsError        the parameters file is missing, malformed or refers to missing things (exit 2)
├── UsageError         the command line is wrong (exit 2)
├── ProbeError         a check could not look: the result is `error`, never pass or fail
│   ├── TargetUnreachable   connection refused, DNS failure, TLS handshake failure
│   │   └── TargetUntrusted  the TLS handshake completed but the certificate did not verify
│   ├── TargetTimeout       the target did not answer in time
│   ├── NotAnAsapAgent      the target answered, but not like an ASAP agent
│   └── RateLimited         the target's rate limit needs a longer wait than the bound allows
├── PrometheusError    Prometheus could not be queried (result `error`)
└── DeploymentError    the reference deployment could not start
"""


class RunbookError(Exception):
    exit_code = 3

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ParamsError(RunbookError):
    exit_code = 2


class UsageError(RunbookError):
    exit_code = 2


class ProbeError(RunbookError):
    pass


class TargetUnreachable(ProbeError):
    pass


class TargetUntrusted(TargetUnreachable):
    pass


class TargetTimeout(ProbeError):
    pass


class NotAnAsapAgent(ProbeError):
    pass


class RateLimited(ProbeError):
    pass


class PrometheusError(RunbookError):
    pass


class DeploymentError(RunbookError):
    pass
