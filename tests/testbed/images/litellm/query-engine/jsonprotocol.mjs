// Part of the test bed's query-engine STAND-IN (see query-engine.mjs for why it exists).
//
// Prisma Client Python speaks the GraphQL protocol; the wasm query engine understands only Prisma's
// JSON protocol. This module turns one into the other, using the schema's DMMF (the same document
// Prisma's own clients are generated from) to know what each argument is:
//   - Json, DateTime, BigInt, Decimal and Bytes values are sent tagged, {"$type": T, "value": ...}.
//     Untagged, a Json value is stored as a JSON *string* (jsonb_typeof = 'string'), not as the
//     object it spells.
//   - raw queries' `parameters` stay exactly as sent (a JSON string); the engine refuses them tagged.
// Answers come back with their values tagged the same way; tags are removed so the client sees what
// the native engine's GraphQL protocol returns (the value, e.g. a Json field as its JSON text).

import { RawNumber, parseDocument, stringify } from "./graphql.mjs";

const ACTION = /^(findUnique|findFirst|findMany|createOne|createManyAndReturn|createMany|updateOne|updateMany|deleteOne|deleteMany|upsertOne|aggregate|groupBy)(.+?)(OrThrow)?$/;
const RAW_ACTIONS = new Set(["executeRaw", "queryRaw"]);
// In order of precedence when a position accepts more than one of them.
const TAGGED_SCALARS = ["Json", "BigInt", "DateTime", "Decimal", "Bytes"];

export class ProtocolError extends Error {}

export class Translator {
  constructor(dmmf) {
    this.models = new Set(dmmf.datamodel.models.map((m) => m.name));
    // input object type -> field name -> the input types that field accepts
    this.inputTypes = new Map();
    for (const type of dmmf.schema.inputObjectTypes.prisma ?? []) {
      this.inputTypes.set(type.name, new Map(type.fields.map((f) => [f.name, f.inputTypes])));
    }
    // output object type (Query, Mutation, models, aggregates) -> field -> {args, type}
    this.outputTypes = new Map();
    for (const namespace of Object.values(dmmf.schema.outputObjectTypes)) {
      for (const type of namespace) {
        this.outputTypes.set(type.name, new Map(type.fields.map((f) => [
          f.name,
          { args: new Map(f.args.map((a) => [a.name, a.inputTypes])), type: f.outputType.type },
        ])));
      }
    }
  }

  // One GraphQL document -> one JSON-protocol query.
  query(graphql) {
    const doc = parseDocument(graphql);
    const root = this.outputTypes.get(doc.operation === "query" ? "Query" : "Mutation");
    const { action, modelName } = this.split(doc.field);
    const def = root.get(doc.field);
    if (def === undefined) throw new ProtocolError(`the schema has no ${doc.operation} ${doc.field}`);
    const args = RAW_ACTIONS.has(action) ? doc.args : this.typedArguments(doc.args, def.args);
    const query = { arguments: args, selection: doc.selection ? this.selection(doc.selection, def.type) : {} };
    return modelName === undefined ? { action, query } : { modelName, action, query };
  }

  split(field) {
    if (RAW_ACTIONS.has(field)) return { action: field, modelName: undefined };
    const m = ACTION.exec(field);
    if (m === null || !this.models.has(m[2])) throw new ProtocolError(`unsupported operation ${field}`);
    return { action: m[1] + (m[3] ?? ""), modelName: m[2] };
  }

  typedArguments(args, defs) {
    const out = {};
    for (const [name, value] of Object.entries(args)) out[name] = this.typed(value, defs?.get(name) ?? []);
    return out;
  }

  // `value` as the JSON protocol wants it where the schema accepts `inputTypes`.
  typed(value, inputTypes) {
    if (value === null) return null;
    if (Array.isArray(value)) return value.map((item) => this.typed(item, inputTypes));
    const scalar = TAGGED_SCALARS.find((t) => inputTypes.some((i) => i.location === "scalar" && i.type === t));
    const objectTypes = inputTypes.filter((i) => i.location === "inputObjectTypes").map((i) => i.type);
    if (typeof value === "object" && !(value instanceof RawNumber)) {
      if (objectTypes.length === 0 && scalar === "Json") return { $type: "Json", value: stringify(value) };
      const out = {};
      for (const [key, item] of Object.entries(value)) out[key] = this.typed(item, this.fieldTypes(objectTypes, key));
      return out;
    }
    if (scalar === undefined) return value;
    if (scalar === "Json" && typeof value === "string") return { $type: "Json", value };
    return { $type: scalar, value: value instanceof RawNumber ? value.text : String(value) };
  }

  // What `key` accepts in any of the candidate input object types (e.g. a create input and its
  // unchecked twin): the union, since the engine itself picks the type that fits.
  fieldTypes(objectTypes, key) {
    const out = [];
    for (const name of objectTypes) out.push(...(this.inputTypes.get(name)?.get(key) ?? []));
    return out;
  }

  selection(fields, outputType) {
    const defs = this.outputTypes.get(outputType);
    const out = {};
    for (const field of fields) {
      const def = defs?.get(field.name);
      const hasArgs = Object.keys(field.args).length > 0;
      if (field.selection === null && !hasArgs) {
        out[field.name] = true;
        continue;
      }
      const entry = {};
      if (hasArgs) entry.arguments = this.typedArguments(field.args, def?.args);
      entry.selection = field.selection ? this.selection(field.selection, def?.type) : { $scalars: true };
      out[field.name] = entry;
    }
    return out;
  }

  // The body for the engine: a single query, or a batch.
  request(body) {
    if (Array.isArray(body.batch)) {
      const batch = body.batch.map((item) => this.query(item.query));
      return body.transaction ? { batch, transaction: {} } : { batch };
    }
    return this.query(body.query);
  }
}

// The engine's answer, as the GraphQL protocol gives it: the single root field under the alias
// `result`, tags removed. Raw results ({columns, types, rows}) are never tagged and are passed as
// they are: untagging them would turn a jsonb value that happens to be {"$type": .., "value": ..}
// into its `value`.
export function toGraphQLResponse(answer) {
  if (answer.errors) return { errors: answer.errors };
  if (answer.batchResult) return { batchResult: answer.batchResult.map(toGraphQLResponse) };
  const [field, value = null] = Object.entries(answer.data ?? {})[0] ?? [];
  return { data: { result: RAW_ACTIONS.has(field) ? value : untag(value) } };
}

export function untag(value) {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map(untag);
  const keys = Object.keys(value);
  if (keys.length === 2 && "$type" in value && "value" in value) return value.value;
  const out = {};
  for (const key of keys) out[key] = untag(value[key]);
  return out;
}
