"""Images/s of the identity-grouped training loader at 224 x 224.

    python benchmarks/data.py [--identities 50] [--per-identity 6] [--data-dir DIR] [--batches 20]

Builds (once, cached in --data-dir) a synthetic_faces dataset of demo-head renders at 224 px
as array_record, then times FaceLoader (JPEG + PNG decode, DECA crop warp, batching) with 1
and 2 threads, N=8 identities x K=4 images per batch. Also times the per-image work alone
(no grain) as the reference the threads should beat. Timing excludes the first batch.
"""
import argparse
import os
import tempfile
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--identities", type=int, default=50)
    p.add_argument("--per-identity", type=int, default=6)
    p.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "jaxdeca_bench_data"))
    p.add_argument("--batches", type=int, default=20)
    a = p.parse_args()
    from jaxdeca.data import loader, tfds_faces
    cfg = tfds_faces.SyntheticConfig(name=f"bench_{a.identities}x{a.per_identity}", identities=a.identities,
                                     images_per_identity=a.per_identity, image_size=224)
    t = time.perf_counter()
    builder = tfds_faces.build(tfds_faces.SyntheticFaces(config=cfg, data_dir=a.data_dir))
    print(f"dataset: {a.identities * a.per_identity} images at 224 px ready in {time.perf_counter() - t:.1f} s "
          f"({a.data_dir})")
    source, groups = tfds_faces.data_source(builder), tfds_faces.groups(builder)
    n, k = 8, 4
    base = dict(groups_per_batch=n, k=k, image_size=224, seed=0)

    c = loader.LoaderConfig(**base)
    ld = loader.FaceLoader(source, groups, c, 0, 1)
    ld.batch_at(0)
    t = time.perf_counter()
    for s in range(1, 6):
        ld.batch_at(s)
    ref = 5 * n * k / (time.perf_counter() - t)
    print(f"no grain, 1 thread (batch_at):     {ref:8.1f} images/s")
    for threads in (1, 2):
        c = loader.LoaderConfig(**base, num_threads=threads, prefetch=2)
        it = loader.FaceLoader(source, groups, c, 0, 1)
        next(it)
        t = time.perf_counter()
        for _ in range(a.batches):
            b = next(it)
        dt = time.perf_counter() - t
        print(f"FaceLoader, {threads} thread(s):            {a.batches * n * k / dt:8.1f} images/s "
              f"(batch {b['image'].shape}, {dt / a.batches * 1000:.0f} ms/batch)")
    print(f"machine: {os.cpu_count()} CPU cores (shared with other jobs: figures are indicative)")


if __name__ == "__main__":
    main()
