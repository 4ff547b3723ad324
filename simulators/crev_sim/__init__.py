"""Simulated Modbus meters and inverters for tests and the demo.

``crev sim meters --config sim.toml`` serves Eastron SDM630/SDM120 and
SunSpec devices over Modbus TCP, driven by a seeded site model on an
accelerated clock, with switchable faults.

Errors::

    SimConfigError   the simulator configuration is wrong (one line, exit 2)
"""
