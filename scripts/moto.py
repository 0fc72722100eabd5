"""Small moto chores for the demo: queues, sender identity, SQS events, what was sent.

Runs with the moto virtualenv's Python (boto3 comes with moto):
  python scripts/moto.py ENDPOINT create-queue NAME
  python scripts/moto.py ENDPOINT verify-sender ADDRESS
  python scripts/moto.py ENDPOINT receive QUEUE_URL EVENT_FILE     # an SQS event for Lambda
  python scripts/moto.py ENDPOINT delete QUEUE_URL EVENT_FILE RESPONSE_FILE
  python scripts/moto.py ENDPOINT sent                             # emails and SMS moto accepted
"""
import json
import sys
import urllib.request

import boto3


def client(endpoint, service):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def main(endpoint, command, *args):
    if command == "create-queue":
        print(client(endpoint, "sqs").create_queue(QueueName=args[0])["QueueUrl"])
    elif command == "verify-sender":
        client(endpoint, "sesv2").create_email_identity(EmailIdentity=args[0])
    elif command == "receive":
        queue_url, out = args
        got = client(endpoint, "sqs").receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                                      WaitTimeSeconds=1, VisibilityTimeout=60)
        records = [{
            "messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
            "attributes": {}, "messageAttributes": {}, "md5OfBody": m["MD5OfBody"],
            "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:herald-demo",
            "awsRegion": "us-east-1",
        } for m in got.get("Messages", [])]
        with open(out, "w") as f:
            json.dump({"Records": records}, f, indent=2)
        print(len(records))
    elif command == "delete":
        queue_url, event_file, response_file = args
        with open(event_file) as f:
            records = json.load(f)["Records"]
        with open(response_file) as f:
            failed = {x["itemIdentifier"] for x in json.load(f).get("batchItemFailures", [])}
        sqs = client(endpoint, "sqs")
        for r in records:
            if r["messageId"] not in failed:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=r["receiptHandle"])
    elif command == "sent":
        data = json.load(urllib.request.urlopen(endpoint + "/moto-api/data.json"))
        for m in data.get("ses", {}).get("Message", []):
            print(f"EMAIL  from {m['source']} to {', '.join(m['destinations']['ToAddresses'])}")
            print(f"       subject: {m['subject']}")
            print(f"       body:    {m['body']}")
        for m in data.get("sns", {}).get("SMS", []):
            print(f"SMS    to {m['phone_number']}: {m['message']}")
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main(*sys.argv[1:])
