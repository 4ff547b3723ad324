"""The MicroPython application of a DGC controller, around the portable core.

Modules: ``rtu_bus`` (Modbus RTU over a UART), ``meters`` (register maps to
channels), ``outbox`` (signed readings on flash until acknowledged),
``keystore`` (the device key, made on the device), ``clock`` (synchronised
time and clock steps), ``uplink`` (MQTT through umqtt.simple) and ``app``
(the interval loop). Hardware is passed in, so every module runs under test
with stand-ins for the parts a test machine does not have.
"""

FIRMWARE = "crev-fw/0.1.0"
