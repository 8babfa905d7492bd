"""The projector's pure core: pgoutput and replication frames decoded, the streaming session,
the projection of row changes onto boards, buckets, board definitions, key names, queries,
the watermark and the configuration fingerprint. No module here opens a connection, starts a
thread or reads a clock (clocks are parameters): ``tests/core/test_layers.py`` checks it.
"""
