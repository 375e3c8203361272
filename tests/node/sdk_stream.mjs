// Usage: node sdk_stream.mjs BASE_URL MODEL
// One streamed chat completion through the official SDK (whatever SSE comments or progress
// chunks precede the answer); prints one JSON line: the text, the chunk count, the extra
// delta fields seen (e.g. reasoning_content).
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
const stream = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "Hi" }],
  max_tokens: 6,
  stream: true,
});
let text = "";
let chunks = 0;
const extras = new Set();
for await (const chunk of stream) {
  chunks += 1;
  const delta = chunk.choices[0]?.delta ?? {};
  text += delta.content ?? "";
  for (const key of Object.keys(delta)) if (!["content", "role"].includes(key)) extras.add(key);
}
console.log(JSON.stringify({ text, chunks, extras: [...extras] }));
