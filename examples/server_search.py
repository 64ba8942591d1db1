"""The OpenAI-compatible server from the official client: a tool call or a typed answer, and a beam
search whose beams all follow a JSON Schema. Start the server first:

  searchdec serve --model smollm2-135m --port 8000
  python examples/server_search.py
"""

from openai import OpenAI, pydantic_function_tool
from pydantic import BaseModel


class Person(BaseModel):
    name: str
    age: int


class GetWeather(BaseModel):
    city: str


client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
for question in ["What's the weather in Paris?", "Describe a person as JSON."]:
    message = client.chat.completions.parse(
        model="smollm2-135m", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=48,
        tools=[pydantic_function_tool(GetWeather)], parallel_tool_calls=False, response_format=Person,
    ).choices[0].message  # fmt: skip
    print(question, "->", message.tool_calls[0].function.parsed_arguments if message.tool_calls else message.parsed)

person = {"name": "person", "schema": Person.model_json_schema(), "strict": True}  # strict: no other properties
beams = client.chat.completions.create(
    model="smollm2-135m", messages=[{"role": "user", "content": "Describe a person as JSON."}], n=3, max_tokens=48,
    response_format={"type": "json_schema", "json_schema": person}, extra_body={"search": {"algorithm": "beam"}},
)  # fmt: skip
for choice in beams.choices:
    print(f"beam {choice.index}: {choice.message.content!r} ({choice.finish_reason})")
