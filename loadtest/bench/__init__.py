"""The fan-out benchmark: one driver (driver.py) and one small adapter per server measured.

``tidings_adapter.py`` speaks the Tidings protocol, ``socketio_adapter.py`` Engine.IO 4 /
Socket.IO 5; ``loadtest/fanout.py`` and ``loadtest/baseline/socketio_bench.py`` are their
command lines.
"""
