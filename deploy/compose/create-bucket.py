"""Create the job bucket once S3 answers; exit 0 if it exists already.

Run by the compose service ``s3-init`` with the S3 admin identity, so the
workers' own identity needs no right to create buckets. Retries because the
S3 gateway reports healthy a little before it accepts bucket operations.
"""

import os
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError

bucket = os.environ.get("S3_BUCKET", "anonymize")
client = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])

for _ in range(60):
    try:
        client.create_bucket(Bucket=bucket)
        print(f"created bucket {bucket}")
        sys.exit(0)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            print(f"bucket {bucket} exists")
            sys.exit(0)
        error = f"{code}: {exc}"
    except BotoCoreError as exc:
        error = str(exc)
    print(f"waiting for S3 ({error})", file=sys.stderr)
    time.sleep(2)
print(f"could not create bucket {bucket}: {error}", file=sys.stderr)
sys.exit(1)
