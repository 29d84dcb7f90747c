"""Kubernetes deployment of a bundle: ``moerm deploy render | apply | status``.

- :mod:`moerm.deploy.values`: the values file (per-task replicas and resources,
  images, TLS, tokens, Redis, autoscaling) and the ``cpu`` / ``gpu`` profiles;
- :mod:`moerm.deploy.render`: the objects, built with the ``kubernetes``
  client's typed models (KEDA and Prometheus-operator objects, which have no
  typed models there, as plain mappings), written as YAML;
- :mod:`moerm.deploy.cluster`: server-side apply and a status table against a
  real cluster;
- :mod:`moerm.deploy.bundle_check` and :mod:`moerm.deploy.probe`: what the pods
  run besides the services (the bundle version check of the init container,
  the gRPC health probe that speaks mTLS).

Everything here but ``render``/``cluster`` imports no ``kubernetes`` package,
so the images need only moerm itself.
"""
