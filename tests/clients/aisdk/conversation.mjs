// A two-turn conversation through the Vercel AI SDK's OpenAI Responses provider, as an app
// writes it: the second turn sends the first turn's messages back (result.response.messages).
// With `store` on (the provider's default) the SDK sends each answered assistant item as
// {"type": "item_reference", "id": ...}, without its text. Prints one JSON line.
// Environment: BASE_URL (Turnpike's /v1), API_KEY, MODEL, STREAM ("1": the second turn streams),
// FIRST (the first question; default "first question").
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const provider = createOpenAI({ baseURL: process.env.BASE_URL, apiKey: process.env.API_KEY });
const model = provider.responses(process.env.MODEL);
const messages = [{ role: "user", content: process.env.FIRST || "first question" }];
const first = await generateText({ model, messages, maxRetries: 0 });
messages.push(...first.response.messages, { role: "user", content: "second question" });
let second;
if (process.env.STREAM === "1") {
  const result = streamText({ model, messages, maxRetries: 0,
                              onError: ({ error }) => { throw error; } });
  second = { text: await result.text, id: (await result.response).id };
} else {
  const result = await generateText({ model, messages, maxRetries: 0 });
  second = { text: result.text, id: result.response.id };
}
console.log(JSON.stringify({ first: { text: first.text, id: first.response.id }, second }));
