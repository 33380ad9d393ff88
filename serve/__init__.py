"""busi-serve: the exported models on kserve's v2 REST application, on the open inference protocol
(v2), with dynamic batching, a bounded queue, a token and Prometheus metrics. No TensorFlow:
it needs the runtime and the `serve` extra only."""
