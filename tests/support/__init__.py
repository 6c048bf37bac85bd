"""What the tests share: backends, processes, disks, HTTP clients, tenants and deployments.

- :mod:`tests.support.backends`: which database and broker the tier runs on, qemu-img.
- :mod:`tests.support.databases`: scratch databases, and migrated templates cloned per test.
- :mod:`tests.support.processes`: ``imagesvc`` commands and service processes, free ports.
- :mod:`tests.support.disks`: sparse raw disks, and the files an image has in the store.
- :mod:`tests.support.contract`: what every reply is checked against (``Reply``, times).
- :mod:`tests.support.waiting`: the one poller every "wait until" is built on.
- :mod:`tests.support.http`: a plain HTTP client for a service in another process.
- :mod:`tests.support.tenants`: an account calling the in-process API (``Tenant``).
- :mod:`tests.support.deployment`: a scratch deployment with its own processes.
- :mod:`tests.support.records`: rows for the domain tier, made by the domain's functions.
- :mod:`tests.support.s3_server`: a real S3-compatible server (``rclone serve s3``).
"""
