// Usage: node sdk_check.mjs BASE_URL MODEL [MODEL ...]
// Alternates the models (twice), non-streaming then streaming, through the official SDK,
// and prints one JSON line with what came back.
import OpenAI from "openai";

const [baseURL, ...models] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
const messages = [{ role: "user", content: "Hi" }];
const results = [];
for (const model of [...models, ...models]) {
  const { data: reply, response } = await client.chat.completions
    .create({ model, messages, max_tokens: 5 })
    .withResponse();
  const stream = await client.chat.completions.create({ model, messages, max_tokens: 5, stream: true });
  let streamed = "";
  for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? "";
  results.push({
    model,
    replyModel: reply.model,
    text: reply.choices[0].message.content,
    streamed,
    wakeMs: response.headers.get("x-vllm-switch-wake-ms"),
  });
}
const list = await client.models.list();
console.log(JSON.stringify({ results, models: list.data.map((m) => m.id) }));
