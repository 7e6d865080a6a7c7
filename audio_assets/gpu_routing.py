"""How GPU steps reach GPU capacity, whichever executor runs them.

- dagster-celery: the step goes to the `gpu` queue, which only GPU hosts consume
  (`dagster-celery worker start -A audio_assets.workers.celery_app -q gpu`); the rest go to `cpu`.
- dagster-k8s: the step's pod requests one NVIDIA GPU.
- any executor: pool "gpu" caps concurrent GPU steps instance-wide
  (`dagster instance concurrency set gpu N`, N = GPUs available).
CPU assets carry none of these, so they never wait for a GPU host.
"""

GPU_POOL = "gpu"

GPU_OP_TAGS = {
    "dagster-celery/queue": "gpu",
    "dagster-k8s/config": {
        "container_config": {
            "resources": {
                "requests": {"nvidia.com/gpu": "1"},
                "limits": {"nvidia.com/gpu": "1"},
            }
        }
    },
}
