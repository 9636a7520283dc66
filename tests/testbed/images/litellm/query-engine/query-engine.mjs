// STAND-IN for Prisma's native `query-engine` binary, for the test bed's LiteLLM image only.
//
// Why: LiteLLM's DB-backed proxy talks to PostgreSQL through Prisma Client Python, which spawns
// Prisma's native query engine. That binary is downloaded from Prisma's servers at run time; no
// package on PyPI, npm or Debian ships it, so a machine with only the package registries cannot run
// the proxy with a database. Prisma's own query engine compiled to WebAssembly *is* on npm, from the
// very engine commit Prisma Client Python 0.15.0 expects (393aa359). This program serves the native
// binary's HTTP interface and runs that wasm engine over `pg` through @prisma/adapter-pg.
//
// What is real: LiteLLM, Prisma Client Python, the query engine's logic (query planning, SQL,
// transactions, errors) and PostgreSQL. What stands in: only the transport around the engine:
// this HTTP server and the GraphQL -> JSON protocol translation (jsonprotocol.mjs).
// Real hosts never use it: the official LiteLLM image ships the native engine.
//
// Interface served, as Prisma Client Python uses it (prisma/engine/_query.py, _http.py):
//   <binary> --version                -> "query-engine <commit>"
//   <binary> -p PORT [--enable-...]   env PRISMA_DML_PATH (the schema), OVERWRITE_DATASOURCES
//   GET  /status                      -> {"status":"ok"}
//   POST /                            one GraphQL query, or {"batch":[...],"transaction":true};
//                                     header X-transaction-id inside an interactive transaction
//   POST /transaction/start           {"timeout","max_wait"} -> {"id"}
//   POST /transaction/{id}/commit | /rollback
//   GET  /metrics                     empty metrics (the wasm engine keeps none)

import fs from "node:fs";
import http from "node:http";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { stringify } from "./graphql.mjs";
import { ProtocolError, Translator, toGraphQLResponse } from "./jsonprotocol.mjs";

const require = createRequire(import.meta.url);
const HERE = path.dirname(fileURLToPath(import.meta.url));
const ENGINE_COMMIT = "393aa359c9ad4a4bb28630fb5613f9c281cde053";
// Column types @prisma/adapter-pg 5.17 cannot describe ("Failed to deserialize column of type
// 'Unknown'"); LiteLLM's raw queries return some (pg_catalog names and their arrays, intervals, void
// functions; its view check selects ARRAY_AGG(viewname), a name[]). They are handed to the engine as
// text (and text[]), as PostgreSQL itself spells them.
const TEXT_OID = 25;
const TEXT_ARRAY_OID = 1009;
const AS_TEXT_OIDS = new Set([18 /* char */, 19 /* name */, 1186 /* interval */, 2205 /* regclass */,
  2206 /* regtype */, 2278 /* void */, 3220 /* pg_lsn */, 3614 /* tsvector */]);
const AS_TEXT_ARRAY_OIDS = new Set([1002 /* char[] */, 1003 /* name[] */, 1187 /* interval[] */,
  2210 /* regclass[] */, 2211 /* regtype[] */]);
// Connection-string parameters that only Prisma understands; `pg` would pass them to the server.
const PRISMA_ONLY_PARAMS = ["schema", "connection_limit", "pool_timeout", "pgbouncer", "socket_timeout",
  "statement_cache_size", "sslaccept", "sslidentity", "sslpassword"];

function log(message) {
  process.stderr.write(`[query-engine stand-in] ${message}\n`);
}

function parseArgs(argv) {
  const options = { port: undefined };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--version" || arg === "-V") options.version = true;
    else if (arg === "-p" || arg === "--port") options.port = Number(argv[++i]);
    else if (arg.startsWith("--enable-")) continue; // metrics, raw queries: always on here
    else if (arg === "--host" || arg === "-H") i++; // always loopback
    else throw new Error(`unsupported argument ${arg}: this stand-in serves HTTP queries only (no \`cli\` commands)`);
  }
  return options;
}

// The datasource URL: Prisma Client Python's override, else the schema's url (env("NAME") or literal).
function datasourceUrl(schema) {
  if (process.env.OVERWRITE_DATASOURCES) {
    const [first] = JSON.parse(process.env.OVERWRITE_DATASOURCES);
    if (first?.url) return first.url;
  }
  const block = /datasource\s+\w+\s*\{([^}]*)\}/s.exec(schema);
  const url = block && /url\s*=\s*(env\(\s*"([^"]+)"\s*\)|"([^"]*)")/.exec(block[1]);
  if (!url) throw new Error("the schema has no datasource url");
  if (url[3] !== undefined) return url[3];
  const value = process.env[url[2]];
  if (!value) throw new Error(`the datasource url comes from ${url[2]}, which is not set`);
  return value;
}

function poolConfig(url) {
  const parsed = new URL(url);
  const schema = parsed.searchParams.get("schema") ?? undefined;
  const limit = Number(parsed.searchParams.get("connection_limit")) || undefined;
  for (const name of PRISMA_ONLY_PARAMS) parsed.searchParams.delete(name);
  return { connectionString: parsed.toString(), max: limit, schema };
}

async function loadEngineModule() {
  const dir = path.join(path.dirname(require.resolve("@prisma/query-engine-wasm/package.json")), "postgresql");
  const bindings = await import(path.join(dir, "query_engine_bg.js"));
  const bytes = fs.readFileSync(path.join(dir, "query_engine_bg.wasm"));
  const { instance } = await WebAssembly.instantiate(bytes, { "./query_engine_bg.js": bindings });
  bindings.__wbg_set_wasm(instance.exports);
  return bindings;
}

function dmmfOf(schema) {
  const schemaWasm = require("@prisma/prisma-schema-wasm");
  return JSON.parse(schemaWasm.get_dmmf(JSON.stringify({ prismaSchema: schema })));
}

// The adapter's queries, with the column types it cannot describe read as the server's own text.
function readUnsupportedColumnsAsText(pg, PrismaPg) {
  const parseTextArray = pg.types.getTypeParser(TEXT_ARRAY_OID);
  for (const oid of AS_TEXT_OIDS) pg.types.setTypeParser(oid, (text) => text);
  for (const oid of AS_TEXT_ARRAY_OIDS) pg.types.setTypeParser(oid, parseTextArray);
  const queryable = Object.getPrototypeOf(PrismaPg.prototype); // shared with its transactions
  const performIO = queryable.performIO;
  queryable.performIO = async function (query) {
    const result = await performIO.call(this, query);
    if (result.ok) {
      for (const field of result.value.fields) {
        if (AS_TEXT_OIDS.has(field.dataTypeID)) field.dataTypeID = TEXT_OID;
        else if (AS_TEXT_ARRAY_OIDS.has(field.dataTypeID)) field.dataTypeID = TEXT_ARRAY_OID;
      }
    }
    return result;
  };
}

async function startEngine(schema) {
  const pg = require("pg");
  const { PrismaPg } = require("@prisma/adapter-pg");
  const { bindAdapter } = require("@prisma/driver-adapter-utils");
  readUnsupportedColumnsAsText(pg, PrismaPg);
  const { schema: pgSchema, ...config } = poolConfig(datasourceUrl(schema));
  const pool = new pg.Pool(config);
  pool.on("error", (e) => log(`idle connection error: ${e.message}`));
  const adapter = bindAdapter(new PrismaPg(pool, { schema: pgSchema }));
  const { QueryEngine } = await loadEngineModule();
  const logLevel = (process.env.RUST_LOG ?? "error").split(",")[0];
  const engine = new QueryEngine({ datamodel: schema, logLevel, logQueries: Boolean(process.env.LOG_QUERIES) },
    (line) => log(line), adapter);
  await engine.connect("{}");
  return { engine, pool };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function send(res, status, body) {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json" });
  res.end(text);
}

// An engine answer that is an error object ({error_code, message, ...}) as Prisma Client Python
// reads errors: a list under `errors` with the user-facing part.
function asErrors(answer) {
  return { errors: [{ error: answer.message, user_facing_error: answer }] };
}

function makeHandler(engine, translator) {
  return async (req, res) => {
    const url = new URL(req.url, "http://localhost");
    const tx = /^\/transaction\/([^/]+)\/(commit|rollback)$/.exec(url.pathname);
    try {
      if (req.method === "GET" && url.pathname === "/status") return send(res, 200, { status: "ok" });
      if (req.method === "GET" && url.pathname === "/metrics") {
        if (url.searchParams.get("format") === "prometheus") return send(res, 200, "");
        return send(res, 200, { counters: [], gauges: [], histograms: [] });
      }
      if (req.method === "POST" && url.pathname === "/") {
        const body = JSON.parse(await readBody(req));
        const txId = req.headers["x-transaction-id"] || undefined;
        const answer = JSON.parse(await engine.query(stringify(translator.request(body)), "{}", txId));
        return send(res, 200, toGraphQLResponse(answer));
      }
      if (req.method === "POST" && url.pathname === "/transaction/start") {
        const text = await readBody(req);
        const options = text ? JSON.parse(text) : {};
        const input = { max_wait: options.max_wait ?? 2000, timeout: options.timeout ?? 5000,
          isolation_level: options.isolation_level };
        const answer = JSON.parse(await engine.startTransaction(JSON.stringify(input), "{}"));
        return send(res, 200, answer.id ? { id: answer.id } : asErrors(answer));
      }
      if (req.method === "POST" && tx) {
        const run = tx[2] === "commit" ? engine.commitTransaction : engine.rollbackTransaction;
        const answer = JSON.parse(await run.call(engine, tx[1], "{}"));
        return send(res, 200, answer.error_code ? asErrors(answer) : {});
      }
      return send(res, 404, { errors: [{ error: `no such endpoint: ${req.method} ${url.pathname}` }] });
    } catch (e) {
      // A request this stand-in cannot translate is a bug in it, never a user error: say so loudly.
      log(`${e instanceof ProtocolError ? "cannot translate" : "failed"}: ${e.stack ?? e}`);
      return send(res, 500, { errors: [{ error: `query-engine stand-in: ${e.message}` }] });
    }
  };
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  if (options.version) {
    process.stdout.write(`query-engine ${ENGINE_COMMIT}\n`);
    return;
  }
  if (!options.port) throw new Error("no port given (-p PORT)");
  const dmlPath = process.env.PRISMA_DML_PATH;
  if (!dmlPath) throw new Error("PRISMA_DML_PATH is not set (the schema this engine serves)");
  const schema = fs.readFileSync(dmlPath, "utf8");
  const translator = new Translator(dmmfOf(schema));
  const { engine, pool } = await startEngine(schema);
  const server = http.createServer(makeHandler(engine, translator));
  server.listen(options.port, "127.0.0.1");
  const stop = async () => {
    server.close();
    await engine.disconnect("{}").catch(() => {});
    await pool.end().catch(() => {});
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

main().catch((e) => {
  log(e.stack ?? String(e));
  process.exit(1);
});
