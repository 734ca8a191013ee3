//! The monthly note as a PDF a clinician can sign (pdf-writer, built-in Helvetica).

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str};

const LINES_PER_PAGE: usize = 56;
const FONT_SIZE: f32 = 9.5;

/// Latin text only (the built-in font's encoding); other characters become '?'.
fn latin(s: &str) -> Vec<u8> {
    s.chars()
        .map(|c| match c {
            '–' | '—' => b'-',
            c if (c as u32) < 0x7f && (c as u32) >= 0x20 => c as u8,
            _ => b'?',
        })
        .collect()
}

/// Wrap long lines at about `width` characters.
fn wrap(lines: &[String], width: usize) -> Vec<String> {
    let mut out = Vec::new();
    for l in lines {
        let indent: String = l.chars().take_while(|c| *c == ' ').collect();
        let mut cur = String::new();
        for word in l.split(' ') {
            if cur.len() + word.len() + 1 > width && !cur.trim().is_empty() {
                out.push(cur);
                cur = format!("{indent}    ");
            }
            if !cur.is_empty() && !cur.ends_with(' ') {
                cur.push(' ');
            }
            cur.push_str(word);
        }
        out.push(cur);
    }
    out
}

/// Render lines of text as a PDF (US letter, several pages if needed).
pub fn render(title: &str, lines: &[String]) -> Vec<u8> {
    let lines = wrap(lines, 100);
    let pages: Vec<&[String]> = lines.chunks(LINES_PER_PAGE).collect();
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let font = Ref::new(3);
    let bold = Ref::new(4);
    let page_ids: Vec<Ref> = (0..pages.len())
        .map(|i| Ref::new(10 + 2 * i as i32))
        .collect();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids(page_ids.iter().copied())
        .count(pages.len() as i32);
    pdf.type1_font(font).base_font(Name(b"Helvetica"));
    pdf.type1_font(bold).base_font(Name(b"Helvetica-Bold"));
    for (i, chunk) in pages.iter().enumerate() {
        let page_id = page_ids[i];
        let content_id = Ref::new(11 + 2 * i as i32);
        let mut page = pdf.page(page_id);
        page.media_box(Rect::new(0.0, 0.0, 612.0, 792.0));
        page.parent(tree);
        page.contents(content_id);
        let mut res = page.resources();
        let mut fonts = res.fonts();
        fonts.pair(Name(b"F1"), font);
        fonts.pair(Name(b"F2"), bold);
        fonts.finish();
        res.finish();
        page.finish();
        let mut c = Content::new();
        c.begin_text();
        c.set_font(Name(b"F2"), 12.0);
        c.next_line(54.0, 750.0);
        c.show(Str(&latin(title)));
        c.set_font(Name(b"F1"), FONT_SIZE);
        c.set_leading(12.0);
        c.next_line(0.0, -20.0);
        for l in chunk.iter() {
            c.show(Str(&latin(l)));
            c.next_line_using_leading();
        }
        c.next_line(0.0, -6.0);
        c.show(Str(&latin(&format!("Page {} of {}", i + 1, pages.len()))));
        c.end_text();
        pdf.stream(content_id, &c.finish());
    }
    pdf.finish()
}
