#!/usr/bin/env python3
"""The orders saga's inventory, payment and shipping participants, written
on librdkafka (confluent_kafka) and Apache Avro (avro): sagapipe's
participant contract in a language other than Go.

usage: participant.py BOOTSTRAP_SERVERS REGISTRY_URL SCHEMA_DIR

Every command is answered with its success reply. Effects are kept by the
command's idempotency_key, so a resend (a new ce_id, the same key) gets the
same reply and applies nothing again. A compensation whose command was
never applied applies nothing, still replies, and bars the command: should
it arrive later, it is refused. Replies go to the command's reply_to topic,
keyed by saga_id, with librdkafka's default partitioner.
"""

import io
import json
import re
import signal
import struct
import sys
import threading
import urllib.request
import uuid
from datetime import datetime, timezone
from pathlib import Path

import avro.io
import avro.schema
from confluent_kafka import Consumer, KafkaException, Producer

NS = "sagapipe.examples.orders."
TOPICS = ["inventory.commands", "payment.commands", "shipping.commands"]
GROUP = "orders-participants-py"
SOURCE = "orders-participants-py"

# Each command's success reply: its record name, and its value.
REPLIES = {
    "ReserveInventory": ("InventoryReserved",
                         lambda c: {"order_id": c["order_id"], "sku": c["sku"], "quantity": c["quantity"]}),
    "ReleaseInventory": ("InventoryReleased",
                         lambda c: {"order_id": c["order_id"]}),
    "ChargePayment": ("PaymentCharged",
                      lambda c: {"order_id": c["order_id"], "payment_id": "pay-" + c["order_id"],
                                 "amount_cents": c["amount_cents"]}),
    "RefundPayment": ("PaymentRefunded",
                      lambda c: {"order_id": c["order_id"], "amount_cents": c["amount_cents"]}),
    "ScheduleShipment": ("ShipmentScheduled",
                         lambda c: {"order_id": c["order_id"], "tracking_id": "track-" + c["order_id"]}),
}
# A compensation that comes before its command bars the command: this is
# the reply the command then gets.
REFUSALS = {
    "ReleaseInventory": ("InventoryRejected", "released before it was reserved"),
    "RefundPayment": ("PaymentDeclined", "refunded before it was charged"),
}
# Headers a reply does not copy from its command: a reply is a new event
# (new ce_*), caused by the command, and it asks nothing back.
NOT_COPIED = {"ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time", "content-type", "causation_id",
              "reply_to", "idempotency_key",
              "original_topic", "original_partition", "original_offset", "original_consumer_group"}


class Registry:
    """The two Confluent Schema Registry calls a participant needs."""

    def __init__(self, url):
        self.url, self.by_id = url.rstrip("/"), {}

    def call(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data,
                                     headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.load(resp)

    def schema(self, schema_id):
        """The writer's schema of a value, by the ID in its frame."""
        if schema_id not in self.by_id:
            self.by_id[schema_id] = avro.schema.parse(self.call(f"/schemas/ids/{schema_id}")["schema"])
        return self.by_id[schema_id]

    def register(self, text):
        """Registers a record schema under its full name (sagapipe's subjects
        follow RecordNameStrategy) and returns its ID and the parsed schema."""
        sch = avro.schema.parse(text)
        return self.call(f"/subjects/{sch.fullname}/versions", {"schema": text})["id"], sch


def decode(registry, value):
    """A Confluent-framed Avro value: magic byte 0, 4-byte schema ID, Avro."""
    magic, schema_id = struct.unpack(">bI", value[:5])
    if magic != 0:
        raise ValueError(f"not a Confluent-framed value (magic byte {magic})")
    return avro.io.DatumReader(registry.schema(schema_id)).read(avro.io.BinaryDecoder(io.BytesIO(value[5:])))


def encode(writer, datum):
    schema_id, sch = writer
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    avro.io.DatumWriter(sch).write(datum, avro.io.BinaryEncoder(out))
    return out.getvalue()


def answer(effects, name, command, key):
    """The reply (record name, value) to command `name`, whose effect is
    applied once per idempotency key."""
    if key in effects:  # a resend: the same reply, nothing applied again
        return effects[key]
    do = key.rsplit("/", 1)[0] + "/do"  # keys are "<saga>/<step>/do" and ".../undo"
    if name in REFUSALS and do not in effects:
        # A compensation of a command never applied: nothing to undo, and
        # the command is barred: should it still come, it is refused.
        refusal, reason = REFUSALS[name]
        effects[do] = (refusal, {"order_id": command["order_id"], "reason": reason})
        print("nothing to undo for", key, flush=True)
    else:
        print("applied", name, key, flush=True)  # the effect is applied here
    reply, build = REPLIES[name]
    effects[key] = (reply, build(command))
    return effects[key]


def reply_headers(msg, headers, reply_type):
    copied = [(k, v) for k, v in msg.headers() if k not in NOT_COPIED]
    return copied + [
        ("ce_specversion", "1.0"),
        ("ce_id", str(uuid.uuid4())),
        ("ce_type", reply_type),
        ("ce_source", SOURCE),
        ("ce_time", datetime.now(timezone.utc).isoformat()),
        ("content-type", "application/avro"),
        ("causation_id", headers["ce_id"]),
        ("original_topic", msg.topic()),
        ("original_partition", str(msg.partition())),
        ("original_offset", str(msg.offset())),
        ("original_consumer_group", GROUP),
    ]


def delivered(err, _msg):
    if err is not None:
        raise KafkaException(err)  # raised out of flush(): the command is not committed


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    bootstrap, registry_url, schema_dir = sys.argv[1:]
    registry = Registry(registry_url)
    writers = {}  # reply record name -> (schema ID, schema), registered up front
    for name, _ in [*REPLIES.values(), *REFUSALS.values()]:
        path = Path(schema_dir) / (re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower() + ".avsc")
        writers[name] = registry.register(path.read_text())

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    producer = Producer({"bootstrap.servers": bootstrap})  # the default partitioner: no partitioner set
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    consumer.subscribe(TOPICS, on_assign=lambda _, parts: print("assigned", len(parts), "partitions", flush=True))

    effects = {}  # idempotency_key -> reply; a real service keeps this in its database
    while not stopping.is_set():
        answered = False
        for msg in consumer.consume(100, timeout=0.2):
            if msg.error():
                if msg.error().fatal():
                    raise KafkaException(msg.error())
                print("consumer:", msg.error(), file=sys.stderr, flush=True)
                continue
            headers = {k: v.decode() for k, v in msg.headers()}
            name = headers["ce_type"].removeprefix(NS)
            reply, value = answer(effects, name, decode(registry, msg.value()), headers["idempotency_key"])
            producer.produce(headers["reply_to"], key=headers["saga_id"], value=encode(writers[reply], value),
                             headers=reply_headers(msg, headers, NS + reply), on_delivery=delivered)
            answered = True
        if answered:
            producer.flush()  # every reply acknowledged before its command is committed
            consumer.commit(asynchronous=False)
    consumer.close()


if __name__ == "__main__":
    main()
