// Part of the test bed's query-engine STAND-IN (see query-engine.mjs for why it exists).
//
// Reads the GraphQL documents Prisma Client Python 0.15.0 sends (its prisma/_builder.py), e.g.
//
//   mutation {
//     result: createOneLiteLLM_UserTable
//     (
//       data: { user_id: "u1" spend: 0.0 }
//     )
//     { user_id spend teams }
//   }
//
// That builder writes every scalar with json.dumps, so scalar literals are JSON literals. Numbers
// are kept as their source text (RawNumber): a 64-bit integer must reach PostgreSQL digit for digit,
// and a JavaScript number holds only 53 bits. Commas are whitespace, as in GraphQL.

export class RawNumber {
  constructor(text) {
    this.text = text;
  }
}

export class GraphQLSyntaxError extends Error {}

const PUNCTUATION = new Set(["{", "}", "(", ")", "[", "]", ":"]);
const NAME = /[_A-Za-z][_0-9A-Za-z]*/y;
const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
const STRING = /"(?:[^"\\]|\\.)*"/sy;
const SPACE = /[\s,]+/y;

function tokenize(text) {
  const tokens = [];
  let at = 0;
  const match = (re) => {
    re.lastIndex = at;
    const m = re.exec(text);
    return m ? m[0] : null;
  };
  while (at < text.length) {
    let m;
    if ((m = match(SPACE))) {
      at += m.length;
    } else if (PUNCTUATION.has(text[at])) {
      tokens.push({ kind: text[at], at });
      at += 1;
    } else if ((m = match(STRING))) {
      tokens.push({ kind: "string", value: JSON.parse(m), at });
      at += m.length;
    } else if ((m = match(NUMBER))) {
      tokens.push({ kind: "number", value: new RawNumber(m), at });
      at += m.length;
    } else if ((m = match(NAME))) {
      tokens.push({ kind: "name", value: m, at });
      at += m.length;
    } else {
      throw new GraphQLSyntaxError(`unexpected character ${JSON.stringify(text[at])} at offset ${at}`);
    }
  }
  return tokens;
}

class Parser {
  constructor(text) {
    this.tokens = tokenize(text);
    this.i = 0;
  }

  peek(kind) {
    const t = this.tokens[this.i];
    return t !== undefined && (kind === undefined || t.kind === kind);
  }

  take(kind) {
    const t = this.tokens[this.i];
    if (t === undefined || t.kind !== kind) {
      const seen = t === undefined ? "end of document" : `${t.kind} at offset ${t.at}`;
      throw new GraphQLSyntaxError(`expected ${kind}, found ${seen}`);
    }
    this.i += 1;
    return t;
  }

  // `query { result: field(args) { selection } }` -> {operation, field, args, selection}
  document() {
    const operation = this.take("name").value;
    if (operation !== "query" && operation !== "mutation") {
      throw new GraphQLSyntaxError(`unsupported operation ${operation}`);
    }
    this.take("{");
    const root = this.field();
    this.take("}");
    if (this.peek()) throw new GraphQLSyntaxError("more than one root field");
    return { operation, field: root.name, args: root.args, selection: root.selection };
  }

  // name, or alias: name; then optional (arguments) and optional { selection }
  field() {
    let name = this.take("name").value;
    if (this.peek(":")) {
      this.take(":");
      name = this.take("name").value; // the alias (always `result`) is not needed
    }
    const args = this.peek("(") ? this.arguments() : {};
    const selection = this.peek("{") ? this.selectionSet() : null;
    return { name, args, selection };
  }

  arguments() {
    this.take("(");
    const args = {};
    while (!this.peek(")")) {
      const key = this.take("name").value;
      this.take(":");
      args[key] = this.value();
    }
    this.take(")");
    return args;
  }

  selectionSet() {
    this.take("{");
    const fields = [];
    while (!this.peek("}")) fields.push(this.field());
    this.take("}");
    return fields;
  }

  value() {
    const t = this.tokens[this.i];
    if (t === undefined) throw new GraphQLSyntaxError("expected a value, found end of document");
    switch (t.kind) {
      case "string":
      case "number":
        this.i += 1;
        return t.value;
      case "name":
        this.i += 1;
        if (t.value === "true") return true;
        if (t.value === "false") return false;
        if (t.value === "null") return null;
        return t.value; // an enum value, sent like a string in the JSON protocol
      case "[": {
        this.i += 1;
        const items = [];
        while (!this.peek("]")) items.push(this.value());
        this.take("]");
        return items;
      }
      case "{": {
        this.i += 1;
        const object = {};
        while (!this.peek("}")) {
          const key = this.take("name").value;
          this.take(":");
          object[key] = this.value();
        }
        this.take("}");
        return object;
      }
      default:
        throw new GraphQLSyntaxError(`unexpected ${t.kind} at offset ${t.at}`);
    }
  }
}

export function parseDocument(text) {
  return new Parser(text).document();
}

// JSON text of a parsed value; RawNumber digits are written as they came.
export function stringify(value) {
  if (value instanceof RawNumber) return value.text;
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(stringify).join(",")}]`;
  const parts = [];
  for (const [key, item] of Object.entries(value)) {
    if (item !== undefined) parts.push(`${JSON.stringify(key)}:${stringify(item)}`);
  }
  return `{${parts.join(",")}}`;
}
