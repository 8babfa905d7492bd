"""The test harness: local servers and processes for the tests, the benchmarks, the soak and
`make run`.

`servers` starts throwaway (or, for `make run`, persistent) PostgreSQL and Redis servers;
`redis_topology` local Sentinel and Cluster topologies; `tcp_proxy` a TCP forwarder a test can
stall or cut; `projector_process` runs `projector run` as a child process a test can kill.
Nothing here is imported by `projector` or `api`.
"""
