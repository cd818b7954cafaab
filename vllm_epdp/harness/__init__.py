"""What tests, benchmarks and the commands use to run vLLM here: process groups that never
orphan, ranks, ports, logs, the CPU host, network namespaces, serving deployments, Ray clusters,
tiny local models and the Triton stand-in."""
