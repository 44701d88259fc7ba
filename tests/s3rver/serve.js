// s3rver for kiln's cache tests, on loopback: `node serve.js DATA_DIR BUCKET REQUESTS_LOG`.
// Prints "listening HOST:PORT" once it accepts connections. Every request line (method, URL
// with its query, Host) is appended to REQUESTS_LOG as JSON, because s3rver 3 checks a
// presigned URL's form, credential and expiry but not its SigV4 signature: the tests verify
// the signatures themselves with an independent implementation.
'use strict';
const fs = require('fs');
const S3rver = require('s3rver');

const [directory, bucket, requestsLog] = process.argv.slice(2);
const server = new S3rver({
  address: '127.0.0.1',
  port: 0,
  silent: true,
  directory,
  configureBuckets: [{ name: bucket, configs: [] }],
});
// First in the chain, so every request is seen before s3rver answers it.
server.middleware.unshift(async (ctx, next) => {
  const line = { method: ctx.method, url: ctx.originalUrl, host: ctx.get('host') };
  try {
    await next();
  } finally {
    line.status = ctx.status;
    fs.appendFileSync(requestsLog, JSON.stringify(line) + '\n');
  }
});
server.run().then(({ address, port }) => {
  console.log(`listening ${address}:${port}`);
});
process.on('SIGTERM', () => server.close().then(() => process.exit(0)));
