"""The main job until the training CLI lands: traces, prints and runs sample computations."""

from __future__ import annotations

import collections

import tensorflow as tf

import fedcore


def main() -> None:
    print(f"fedcore {fedcore.__version__}\n")
    print("Sample types:")
    samples = [
        fedcore.to_type(tf.int32),
        fedcore.to_type((tf.float32, [None, 784])),
        fedcore.SequenceType(collections.OrderedDict(x=(tf.float32, [None, 784]), y=(tf.int32, [None]))),
        fedcore.type_at_clients(fedcore.SequenceType(
            collections.OrderedDict(x=(tf.float32, [None, 784]), y=(tf.int32, [None])))),
        fedcore.type_at_server(tf.float32),
    ]
    for t in samples:
        print(f"  {t}")

    @fedcore.federated_computation(fedcore.type_at_clients(tf.float32))
    def get_average_temperature(sensor_readings):
        return fedcore.federated_mean(sensor_readings)

    metrics_type = fedcore.type_at_clients(
        collections.OrderedDict(loss=tf.float32, accuracy=tf.float32, num_examples=tf.int32))

    @fedcore.federated_computation(metrics_type)
    def aggregate_metrics(metrics):
        return collections.OrderedDict(
            num_examples=fedcore.federated_sum(metrics.num_examples),
            loss=fedcore.federated_mean(metrics.loss, metrics.num_examples),
            accuracy=fedcore.federated_mean(metrics.accuracy, metrics.num_examples),
        )

    print("\nSample computations:")
    for comp in (get_average_temperature, aggregate_metrics):
        print(f"  {comp.name}: {comp.type_signature}")
        print("    " + comp.to_ir_string(formatted=True).replace("\n", "\n    "))

    readings = [68.5, 70.3, 69.8]
    print(f"\nget_average_temperature({readings}) = {get_average_temperature(readings):.4f}")
    result = aggregate_metrics([
        dict(loss=0.9, accuracy=0.6, num_examples=92),
        dict(loss=0.5, accuracy=0.8, num_examples=40),
    ])
    print(f"aggregate_metrics(...) = {dict(result)}")


if __name__ == "__main__":
    main()
