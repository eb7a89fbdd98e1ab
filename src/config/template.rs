//! Prompt templates with `{field}` placeholders (`{{` and `}}` are literal braces), as the study wrote them.

use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parse; the error says what is wrong and at which character.
    pub fn parse(src: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = src.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c))
                                if c.is_alphanumeric() || c == '_' || c == '-' || c == '.' =>
                            {
                                name.push(c)
                            }
                            Some((_, c)) => {
                                return Err(format!(
                                    "template: unexpected {c:?} in the placeholder opened at character {} (write `{{{{` for a literal brace)",
                                    char_pos(src, i) + 1
                                ));
                            }
                            None => {
                                return Err(format!(
                                    "template: placeholder opened at character {} is never closed",
                                    char_pos(src, i) + 1
                                ));
                            }
                        }
                    }
                    if name.is_empty() {
                        return Err(format!(
                            "template: empty placeholder `{{}}` at character {}",
                            char_pos(src, i) + 1
                        ));
                    }
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Field(name));
                }
                '}' => {
                    return Err(format!(
                        "template: lone `}}` at character {} (write `}}}}` for a literal brace)",
                        char_pos(src, i) + 1
                    ));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template { pieces })
    }

    /// The placeholder names, sorted.
    pub fn fields(&self) -> BTreeSet<String> {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Field(f) => Some(f.clone()),
                Piece::Text(_) => None,
            })
            .collect()
    }

    /// Fill every placeholder with `value(name)`; `Err(name)` names the first placeholder with no value.
    pub fn render<'a>(
        &self,
        mut value: impl FnMut(&str) -> Option<&'a str>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => out.push_str(value(f).ok_or_else(|| f.clone())?),
            }
        }
        Ok(out)
    }
}

fn char_pos(s: &str, byte: usize) -> usize {
    s[..byte].chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fields_and_literal_braces() {
        let t = Template::parse("Q: {question}\n{{x}} A: {answer}").unwrap();
        assert_eq!(
            t.fields().into_iter().collect::<Vec<_>>(),
            ["answer", "question"]
        );
        let out = t
            .render(|f| match f {
                "question" => Some("1+1?"),
                "answer" => Some("2"),
                _ => None,
            })
            .unwrap();
        assert_eq!(out, "Q: 1+1?\n{x} A: 2");
        assert_eq!(t.render(|_| None).unwrap_err(), "question");
    }

    #[test]
    fn malformed_templates_say_where() {
        assert!(
            Template::parse("a {b")
                .unwrap_err()
                .contains("never closed")
        );
        assert!(
            Template::parse("a } b")
                .unwrap_err()
                .contains("character 3")
        );
        assert!(
            Template::parse("{}")
                .unwrap_err()
                .contains("empty placeholder")
        );
        assert!(
            Template::parse("{a b}")
                .unwrap_err()
                .contains("unexpected ' '")
        );
    }
}
