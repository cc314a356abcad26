r"""Step time and images/s of the stream engine against the number of devices.

For each device count in ``--devices`` the same method, model and chunk size run
data-parallel (``TrainConfig.data_parallel``, :mod:`edgefilter.training.parallel`):
each chunk of ``--batch_size`` split over the devices, the state replicated. Timed is
the runner's ``run_block`` (gathering the block on the host, placing it on the devices,
the device's work, the block's one sync) over ``--blocks`` blocks after a warm-up block,
the median over ``--rounds`` rounds; reported are milliseconds per chunk (a chunk is one
main-network step for SGD and EIF) and instances streamed per second.

On a CPU host the devices are forced (``--xla_force_host_platform_device_count``) and
share the same cores, so this measures what data parallelism costs (partitioning,
collectives, smaller per-device batches), not a speed-up. On a GPU or TPU host the same
command gives the real scaling (chunks grow with ``--batch_size``; keep it a multiple
of every device count):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    .venv/bin/python -m benchmarks.data_parallel --devices=1,2,4,8 \
    --output=benchmarks/results/data_parallel_cpu.json
  .venv/bin/python -m benchmarks.data_parallel --model=resnet20 --image_shape=32,32,3 \
    --batch_size=1024 --devices=1,2,4,8     # on an 8-accelerator host

The images are random (``--image_shape``, 10 classes): time does not depend on them.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags

from benchmarks import report_json
from edgefilter import data as data_lib
from edgefilter.training import config as config_lib
from edgefilter.training import loop as loop_lib
from edgefilter.training import runners
from edgefilter.training import stream as stream_lib
from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_list("devices", ["1", "2", "4", "8"], "Device counts to time (each <= local).")
flags.DEFINE_string("method", "sgd", "Method (one that runs on the stream engine).")
flags.DEFINE_string("model", "lenet", "Main network.")
flags.DEFINE_list("image_shape", ["28", "28", "1"], "Height, width, channels of the images.")
flags.DEFINE_integer("batch_size", 64, "Chunk size m (a multiple of every count).", lower_bound=1)
flags.DEFINE_integer("block_chunks", 8, "Chunks per block.", lower_bound=1)
flags.DEFINE_integer("blocks", 4, "Blocks per round and device count.", lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Rounds; every number is the median.", lower_bound=1)
flags.DEFINE_string("output", "", "Write the results as JSON here.")
cli.check_flag(
    "output", lambda p: p == "" or cli.writable_file(p), "a file path in a writable folder"
)


def _dataset(shape: tuple[int, ...], size: int) -> data_lib.Dataset:
    """Random uint8 images of ``shape`` with labels in [0, 10)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (size, *shape), dtype=np.uint8)
    labels = rng.integers(0, 10, size).astype(np.int32)
    channels = shape[-1]
    info = data_lib.DatasetInfo("random", 10, shape, (0.5,) * channels, (0.25,) * channels)
    return data_lib.Dataset(info, images, labels, images[:100], labels[:100])


class _Timed:
    """One device count's runner and loop state, fed consecutive blocks of the stream."""

    def __init__(self, config: config_lib.TrainConfig, dataset: data_lib.Dataset):
        n = len(dataset.train_labels)
        self.config = config
        self.runner, state = runners.build_runner(config, dataset, n)
        self.loop = loop_lib.initial_loop(state, self.runner)
        self.stream = stream_lib.Stream(config.seed, n, n)
        self.chunk = 0

    def time(self, blocks: int) -> float:
        """Seconds per chunk of ``run_block`` over ``blocks`` blocks."""
        m, size = self.config.batch_size, self.config.block_chunks
        work = []
        for _ in range(blocks):
            block = []
            for _ in range(size):
                start = (self.chunk * m) % (self.stream.num_train - m)
                block.append(
                    (*stream_lib.stream_batch(self.stream.indices(start, m), m), self.chunk)
                )
                self.chunk += 1
            work.append(block)
        jax.block_until_ready(self.loop["state"])
        started = time.perf_counter()
        for block in work:
            self.loop, _ = self.runner.run_block(self.loop, block)
        jax.block_until_ready(self.loop["state"])
        return (time.perf_counter() - started) / (blocks * size)


def main(argv: list[str]) -> None:
    del argv
    try:
        counts = [int(d) for d in FLAGS.devices]
        shape = tuple(int(s) for s in FLAGS.image_shape)
        family = "cifar10" if shape[-1] == 3 else "fashion_mnist"  # The paper's settings.
        configs = {
            d: config_lib.resolve(
                config_lib.TrainConfig(
                    model=FLAGS.model,
                    dataset=family,
                    method=FLAGS.method,
                    batch_size=FLAGS.batch_size,
                    block_chunks=FLAGS.block_chunks,
                    epochs=1.0,
                    data_parallel=d,
                )
            )
            for d in counts
        }
    except ValueError as e:
        cli.fail(str(e))
    size = FLAGS.batch_size * FLAGS.block_chunks * (FLAGS.blocks * FLAGS.rounds + 1) + 1
    dataset = _dataset(shape, size)
    timed = {d: _Timed(c, dataset) for d, c in configs.items()}
    for t in timed.values():  # Warm-up: compile.
        t.time(1)
    seconds: dict[int, list[float]] = {d: [] for d in counts}
    for _ in range(FLAGS.rounds):
        for d, t in timed.items():
            seconds[d].append(t.time(FLAGS.blocks))
    result: dict[str, Any] = {
        "platform": jax.devices()[0].platform,
        "device": str(jax.devices()[0]),
        "local_devices": jax.local_device_count(),
        "method": FLAGS.method,
        "model": FLAGS.model,
        "batch_size": FLAGS.batch_size,
        "xla_cpu": configs[counts[0]].xla_cpu,
        "by_devices": {},
    }
    for d in counts:
        step = statistics.median(seconds[d])
        result["by_devices"][str(d)] = {
            "ms_per_chunk": 1e3 * step,
            "images_per_s": FLAGS.batch_size / step,
        }
        print(f"{d} devices: {1e3 * step:8.2f} ms per chunk, {FLAGS.batch_size / step:9.0f} img/s")
    report_json(result, FLAGS.output, show=False)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
