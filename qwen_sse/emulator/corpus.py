"""The sentences the emulator's answers are made of: content and reasoning, in English and
Chinese.

Edge layer (part of :mod:`qwen_sse.emulator`); data only. The sentences read as a short,
friendly explanation of streaming (and say that the emulator, not a model, is answering),
and carry the Unicode a client must get right: accented Latin letters, curly quotes, the
em dash and ellipsis, degree and fraction signs, emoji, CJK punctuation, and characters
that the Qwen vocabulary splits across two or three tokens (" 😊", "龘"), so that a piece
boundary falls inside a UTF-8 sequence. Each corpus has a prime number of sentences, so any
step from 1 to 4 visits all of them before one repeats.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CONTENT_EN", "CONTENT_ZH", "REASONING_EN", "REASONING_ZH", "WORDS_EN", "WORDS_ZH"]

CONTENT_EN: Final = (
    "Streaming sends the answer token by token, so the first words arrive long before the last.",
    "Each event is one line that starts with “data:”, followed by a blank line.",
    "This reply comes from the qwen-sse emulator, not from a real model.",
    "Time to first token is the wait for the opening word; throughput is how many tokens "
    "follow each second.",
    "If the network drops halfway, a client can resume from the text it already has.",
    "The forecast for São Paulo says 28°C and sunny, with a light breeze after lunch.",
    "A naïve client waits for the whole response; a careful one reads each piece as it arrives.",
    "Our team in Zürich sent a résumé through the stream, and every accent made it intact.",
    "A jalapeño adds heat to the salsa, and a retry adds patience to the client 😊.",
    "Behind the façade of a simple chat box, many small events cross the network.",
    "About ½ of the prompt was cached, so the second request started sooner.",
    "When the token limit is reached, the answer stops and the finish reason says “length”.",
    "Good tests cut the stream at every byte, even in the middle of a character…",
    "The server keeps the connection open and writes a short chunk every few milliseconds.",
    "Tokens are not words: a long word may take three of them, and an emoji two 😊.",
    "Rate limits count requests and tokens per minute, so a burst has to wait its turn.",
    "The usage chunk at the end says how many tokens the prompt and the answer took.",
    "Parsing the stream as it arrives saves memory — there is no need to wait for the end.",
    "Why do tests like an emulator? The same question always gets the same answer.",
    "Every region has its own endpoint, from Beijing to Singapore and Virginia.",
    "Think of each chunk as a postcard: small, quick, and only meaningful in order.",
    "A timeout should cover the gap between two tokens, not the length of the whole answer.",
    "That is all for now; ask again and the stream will start over! 🚀",
)
"""English answers (23 sentences, joined by a space)."""

CONTENT_ZH: Final = (
    "流式输出会把回答一个令牌一个令牌地发出来，第一个字很快就能到达。",
    "每个事件都是以“data:”开头的一行 JSON，后面跟着一个空行。",
    "这条回复来自 qwen-sse 模拟器，而不是真正的模型。",
    "首字延迟是等待第一个令牌的时间；吞吐量是之后每秒生成的令牌数。",
    "如果网络在中途断开，客户端可以带着已经收到的文字继续请求剩下的部分。",
    "杭州今天晴，最高气温 28°C，很适合去西湖边走一走 😊。",
    "“龘”字读作 dá，形容龙腾飞的样子，分词时它会被拆成两个令牌。",
    "限流按分钟统计请求数和令牌数（例如每分钟六百次请求）。",
    "回答达到长度上限时就会停止，结束原因写作“length”。",
    "好的测试会在任意字节处切断数据流，甚至切在一个汉字的中间。",
    "服务器保持连接打开，每隔几毫秒写出一小段数据。",
    "用量信息在最后一个数据块里：提示用了多少令牌，回答用了多少令牌。",
    "为什么测试喜欢模拟器？因为同样的问题总会得到同样的回答。",
    "通义千问的服务覆盖北京、新加坡、弗吉尼亚和香港等地域。",
    "超时应该覆盖两个令牌之间的间隔，而不是整个回答的长度。",
    "解析器边收边解析，既省内存，又不用等到最后。",
    "上下文越长，首字延迟通常也越长，这是正常现象。",
    "工具调用以 JSON 片段的形式流式返回，需要按索引拼接起来。",
    "缓存命中的令牌只按百分之十计费，能省下不少费用！",
    "思考模式会先输出推理过程，再给出最终的回答。",
    "请注意：错误也可能在 HTTP 200 之后以数据帧的形式到达。",
    "就像寄明信片一样，每个数据块都很小，但要按顺序阅读。",
    "今天就说到这里；再问一次，数据流会重新开始 🚀！",
)
"""Chinese answers (23 sentences, joined as they are)."""

REASONING_EN: Final = (
    "Okay, the user is asking about streaming, so I should explain how the pieces arrive.",
    "Let me think about what matters most here: latency, order, and correctness.",
    "First, I'll mention that each event carries a small part of the answer.",
    "Hmm, maybe an example would help — a short one, not a lecture.",
    "Wait, I should also say that the emulator is answering, not a real model.",
    "The user might care about tokens, so I'll note that a token is not always a word.",
    "I could add a detail about retries… but that might be too much.",
    "Let me keep the tone friendly and the sentences short 😊.",
    "Right, the final answer should be clear, correct, and easy to read.",
    "Also, words like café and naïve should survive the trip intact.",
    "Okay, I think I have enough to write the answer now.",
)
"""English reasoning (11 sentences, joined by a space)."""

REASONING_ZH: Final = (
    "嗯，用户在问流式输出，我应该先解释数据是怎么一段一段到达的。",
    "让我想想，这里最重要的是延迟、顺序和正确性。",
    "首先，每个事件只携带回答的一小部分。",
    "也许举一个简短的例子会更清楚，而不是长篇大论。",
    "等一下，我还应该说明这是模拟器在回答，不是真正的模型。",
    "用户可能关心令牌：一个令牌并不总是一个词。",
    "要不要再讲讲重试？可能有点多了……",
    "语气要友好，句子要短 😊。",
    "好，最终的回答要清楚、准确、容易读。",
    "另外，像“龘”这样的生僻字也要完整地传过去。",
    "嗯，我想可以开始写回答了。",
)
"""Chinese reasoning (11 sentences, joined as they are)."""

WORDS_EN: Final = (
    "Hangzhou", "Zürich", "São Paulo", "Beijing", "Singapore", "café", "résumé", "today",
    "tomorrow", "celsius", "streaming", "latency", "Montréal", "Málaga",
)  # fmt: skip
"""English words for the string values of tool-call arguments."""

WORDS_ZH: Final = (
    "杭州", "北京", "上海", "新加坡", "香港", "今天", "明天", "西湖", "天气", "摄氏度",
    "流式", "延迟",
)  # fmt: skip
"""Chinese words for the string values of tool-call arguments."""
