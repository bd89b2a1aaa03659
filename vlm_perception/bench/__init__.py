"""
``vlm-perception bench``: how fast the engine and the node are on this machine.

``models`` builds real-size architectures of the default hub models with random weights (no
network), ``stages`` times the engine per capability and stage, ``command`` runs both parts and
the node measurement (vlm_perception.ros.bench) and writes log/bench/.
"""
