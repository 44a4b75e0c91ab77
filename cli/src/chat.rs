use std::io::{BufRead, Write};

use tern::{ChatMessage, GenerateOptions};

use crate::ModelArgs;

/// The interactive chat loop: one line per user turn, the reply streamed; the conversation is kept.
pub fn run(model: &ModelArgs, system: Option<&str>, options: &GenerateOptions) -> Result<(), tern::Error> {
    if let Some(s) = &options.sampling {
        s.validate()?;
    }
    let engine = crate::load::engine(model)?;
    let mut session = engine.session()?;
    let mut messages: Vec<ChatMessage> = system.map(|s| ChatMessage::new("system", s)).into_iter().collect();
    let start = messages.len();
    eprintln!("chatting with {} (/reset starts over, /exit or end of input quits)", engine.path().display());
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        let _ = write!(out, "> ");
        let _ = out.flush();
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.truncate(start);
                session = engine.session()?;
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", line));
        let prompt = engine.chat_prompt(&messages)?;
        let mut reply = String::new();
        let result = (|| -> Result<(), tern::Error> {
            for token in session.generate(&prompt, options)? {
                let t = token?;
                reply.push_str(&t.text);
                let _ = out.write_all(t.text.as_bytes());
                let _ = out.flush();
            }
            Ok(())
        })();
        let _ = writeln!(out);
        if let Err(e) = result {
            // The turn failed (the context is full, say): say so and keep the conversation usable.
            eprintln!("error: {e}");
            messages.pop();
            continue;
        }
        messages.push(ChatMessage::new("assistant", reply.trim()));
    }
    Ok(())
}
